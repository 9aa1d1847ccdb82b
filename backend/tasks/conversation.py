"""Conversation tasks on the ``database`` queue: save, paged read, delete, the /run turn.

Every write is keyed by the task id (``message_key``), so a redelivered or re-dispatched
task stores nothing twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row

from backend.constants import CONVERSATION_PAGE_DEFAULT, Queue, TaskName
from backend.db.models import ConversationMessage
from backend.db.models.base import utcnow
from backend.db.queries import conversations
from backend.db.queries.conversations import StoredMessage
from backend.responders import load_responder
from backend.runtime.context import TaskContext
from backend.runtime.registry import Mode, task
from backend.runtime.results import json_size


def message_out(m: ConversationMessage | StoredMessage | Row[Any]) -> dict[str, Any]:
    return {"role": m.role, "content": m.content, "created_at": m.created_at.isoformat()}


@task(TaskName.SAVE_CONVERSATION, queue=Queue.DATABASE, mode=Mode.ATOMIC)
async def save_conversation(
    ctx: TaskContext, session_id: str, role: str, content: str, received_at: str
) -> dict[str, Any]:
    async with ctx.connection() as conn:
        stored = await conversations.save_message(
            conn,
            message_key=ctx.task_id,
            session_id=session_id,
            role=role,
            content=content,
            created_at=datetime.fromisoformat(received_at),
        )
    return {"session_id": session_id, **message_out(stored)}


# A page cursor is a position in a session's order: the last message's arrival time (in
# microseconds since the epoch) and id. Opaque to clients, who pass back ``next``; every
# string its pattern (schemas/conversations.py) admits is a valid position.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The page's own keys, its session id (≤ 64) and its cursor (≤ 36), with room to spare:
# the messages get what MAX_RESULT_BYTES leaves after these.
_PAGE_ENVELOPE_BYTES = 512
# Rows fetched per query: a bounded number of rows in memory at a time however large the
# page (the page's own list is bounded by the result budget).
_CHUNK_ROWS = 250


def format_cursor(position: tuple[datetime, int]) -> str:
    at, message_id = position
    return f"{(at - _EPOCH) // _MICROSECOND}-{message_id}"


def parse_cursor(cursor: str) -> tuple[datetime, int]:
    micros, _, message_id = cursor.partition("-")
    return _EPOCH + int(micros) * _MICROSECOND, int(message_id)


@task(TaskName.GET_CONVERSATION_HISTORY, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def get_conversation_history(
    ctx: TaskContext,
    session_id: str,
    limit: int = CONVERSATION_PAGE_DEFAULT,
    after: str | None = None,
) -> dict[str, Any]:
    """One page of a session's history, oldest first, starting after the cursor ``after``.

    The page ends at ``limit`` messages, or earlier when one more would take the result
    past MAX_RESULT_BYTES (runtime/results.py): a long history is read a page at a time
    and never whole, in the worker or in the ledger. ``next`` is the position after the
    page's last message (the given one when the page is empty), so a client can also
    poll it for what arrives later; ``has_more`` says whether more messages followed
    when the page was read. A page always holds at least one message when any follows,
    so paging never stalls (one message larger than the limit fails the read instead).
    """
    budget = ctx.settings.max_result_bytes - _PAGE_ENVELOPE_BYTES
    position = parse_cursor(after) if after is not None else None
    last = position
    messages: list[dict[str, Any]] = []
    used = 0
    has_more = False
    async with ctx.session() as session:
        while not has_more:
            wanted = min(limit + 1 - len(messages), _CHUNK_ROWS)
            rows = await conversations.page(
                session, session_id=session_id, after=last, limit=wanted
            )
            for row in rows:
                out = message_out(row)
                cost = json_size(out) + 2  # and the ", " between list items
                if len(messages) == limit or (messages and used + cost > budget):
                    has_more = True
                    break
                messages.append(out)
                used += cost
                last = (row.created_at, row.id)
            if len(rows) < wanted:
                break
    return {
        "session_id": session_id,
        "messages": messages,
        "next": format_cursor(last) if last is not None else None,
        "has_more": has_more,
    }


@task(TaskName.DELETE_CONVERSATION_HISTORY, queue=Queue.DATABASE, mode=Mode.ATOMIC)
async def delete_conversation_history(ctx: TaskContext, session_id: str) -> dict[str, Any]:
    async with ctx.session() as session, session.begin():
        deleted = await conversations.delete_session(session, session_id=session_id)
    return {"session_id": session_id, "deleted": deleted}


@task(TaskName.RUN_TURN, queue=Queue.DATABASE)
async def run_turn(
    ctx: TaskContext, session_id: str, user_input: str, received_at: str
) -> dict[str, Any]:
    """Store the user turn, ask the responder, store its reply (after the user turn).

    Leased, not atomic: the responder may be a slow outside service, and an atomic run
    would hold the database's write lock (SQLite) while it thinks."""
    async with ctx.session() as session, session.begin():
        user = await conversations.save_message(
            await session.connection(),
            message_key=f"{ctx.task_id}:user",
            session_id=session_id,
            role="user",
            content=user_input,
            created_at=datetime.fromisoformat(received_at),
        )
        history = await conversations.history(session, session_id=session_id)
    await ctx.checkpoint()
    reply = await load_responder(ctx.settings.responder).reply(
        session_id=session_id, history=history, user_input=user_input
    )
    async with ctx.connection() as conn:
        stored = await conversations.save_message(
            conn,
            message_key=f"{ctx.task_id}:assistant",
            session_id=session_id,
            role="assistant",
            content=reply,
            created_at=max(utcnow(), user.created_at + timedelta(microseconds=1)),
        )
    return {"session_id": session_id, "reply": stored.content}
