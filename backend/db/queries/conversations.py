"""Conversation queries: idempotent save, ordered and paged reads, batched delete and purge."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, and_, bindparam, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from backend.db.models import ConversationMessage
from backend.db.prepared import Prepared

PURGE_BATCH = 5_000


def _save_statement(insert: Any) -> Any:
    columns = ("message_key", "session_id", "role", "content", "created_at")
    return (
        insert(ConversationMessage.__table__)
        .values({name: bindparam(name) for name in columns})
        .on_conflict_do_nothing()
        .returning(*ConversationMessage.__table__.c)
    )


# Built once per dialect (the hottest write there is); Core on the table, not the ORM
# entity, so no unit of work or identity map is involved; on SQLite run on the driver
# itself inside the task's transaction (db/prepared.py): 365 against 445 µs for the
# whole save task's body, p50 of 2,000 in a loop.
_SAVE = {"postgresql": _save_statement(pg_insert), "sqlite": _save_statement(sqlite_insert)}
_SAVE_PREPARED = {dialect: Prepared(statement) for dialect, statement in _SAVE.items()}


class StoredMessage(NamedTuple):
    """A row of ``conversation_messages``, in the table's column order."""

    id: int
    message_key: str
    session_id: str
    role: str
    content: str
    created_at: datetime


assert StoredMessage._fields == tuple(ConversationMessage.__table__.c.keys())
_BY_KEY = select(*ConversationMessage.__table__.c).where(
    ConversationMessage.message_key == bindparam("message_key")
)


async def save_message(
    conn: AsyncConnection,
    *,
    message_key: str,
    session_id: str,
    role: str,
    content: str,
    created_at: datetime,
) -> StoredMessage:
    """Insert once per ``message_key``; a second save of the same key returns the first.

    On a connection, not a session: it builds no ORM object, and a save task that opens
    no session skips the session's begin, commit and close (tasks/conversation.py)."""
    values: dict[str, Any] = {
        "message_key": message_key,
        "session_id": session_id,
        "role": role,
        "content": content,
        "created_at": created_at,
    }
    saved = await _SAVE_PREPARED[conn.dialect.name].rows(conn, values)
    if saved:
        return StoredMessage(*saved[0])
    # Saved by an earlier run of the same task.
    stored = (await conn.execute(_BY_KEY, {"message_key": message_key})).first()
    assert stored is not None
    return StoredMessage(*stored)


async def history(session: AsyncSession, *, session_id: str) -> list[ConversationMessage]:
    query = (
        select(ConversationMessage)
        .where(ConversationMessage.session_id == session_id)
        .order_by(ConversationMessage.created_at, ConversationMessage.id)
    )
    return list((await session.scalars(query)).all())


_COLUMNS = ConversationMessage.__table__.c


async def page(
    session: AsyncSession, *, session_id: str, after: tuple[datetime, int] | None, limit: int
) -> list[Row[Any]]:
    """Up to ``limit`` messages of a session in their order (arrival, then id), starting
    just after the message at ``after`` (its ``created_at`` and ``id``), or at the first.

    A keyset, not an offset: a page costs the same wherever it starts (one range scan of
    the session's index), and a message deleted meanwhile (a purge) shifts nothing, so
    paging on returns every message once. The position is a value, not a row to look up:
    it stays valid when its own message is gone."""
    query = select(*_COLUMNS).where(_COLUMNS.session_id == session_id)
    if after is not None:
        at, message_id = after
        query = query.where(
            or_(
                _COLUMNS.created_at > at,
                and_(_COLUMNS.created_at == at, _COLUMNS.id > message_id),
            )
        )
    query = query.order_by(_COLUMNS.created_at, _COLUMNS.id).limit(limit)
    return list((await session.execute(query)).all())


async def delete_session(session: AsyncSession, *, session_id: str) -> int:
    result = await session.execute(
        delete(ConversationMessage).where(ConversationMessage.session_id == session_id)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def purge_older_than(
    session: AsyncSession, *, cutoff: datetime, batch: int = PURGE_BATCH
) -> int:
    """Delete one batch of messages created before ``cutoff``; call until it returns 0.

    Batches keep each transaction (and SQLite's write lock) short during a large purge.
    """
    ids = select(ConversationMessage.id).where(ConversationMessage.created_at < cutoff).limit(batch)
    result = await session.execute(
        delete(ConversationMessage).where(ConversationMessage.id.in_(ids.scalar_subquery()))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
