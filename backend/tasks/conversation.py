"""Conversation tasks on the ``database`` queue: save, read, delete, and the /run turn.

Every write is keyed by the task id (``message_key``), so a redelivered or re-dispatched
task stores nothing twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row

from backend.constants import Queue, TaskName
from backend.db.models import ConversationMessage
from backend.db.models.base import utcnow
from backend.db.queries import conversations
from backend.responders import load_responder
from backend.runtime.context import TaskContext
from backend.runtime.registry import Mode, task


def message_out(m: ConversationMessage | Row[Any]) -> dict[str, Any]:
    return {"role": m.role, "content": m.content, "created_at": m.created_at.isoformat()}


@task(TaskName.SAVE_CONVERSATION, queue=Queue.DATABASE, mode=Mode.ATOMIC)
async def save_conversation(
    ctx: TaskContext, session_id: str, role: str, content: str, received_at: str
) -> dict[str, Any]:
    async with ctx.session() as session, session.begin():
        stored = await conversations.save_message(
            session,
            message_key=ctx.task_id,
            session_id=session_id,
            role=role,
            content=content,
            created_at=datetime.fromisoformat(received_at),
        )
    return {"session_id": session_id, **message_out(stored)}


@task(TaskName.GET_CONVERSATION_HISTORY, queue=Queue.DATABASE, mode=Mode.ATOMIC, notify=False)
async def get_conversation_history(ctx: TaskContext, session_id: str) -> dict[str, Any]:
    async with ctx.session() as session:
        messages = await conversations.history(session, session_id=session_id)
    return {"session_id": session_id, "messages": [message_out(m) for m in messages]}


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
            session,
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
    async with ctx.session() as session, session.begin():
        stored = await conversations.save_message(
            session,
            message_key=f"{ctx.task_id}:assistant",
            session_id=session_id,
            role="assistant",
            content=reply,
            created_at=max(utcnow(), user.created_at + timedelta(microseconds=1)),
        )
    return {"session_id": session_id, "reply": stored.content}
