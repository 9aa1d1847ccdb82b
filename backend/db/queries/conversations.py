"""Conversation queries: idempotent save, ordered read, batched delete and purge."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import ConversationMessage

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
# entity, so no unit of work or identity map is involved.
_SAVE = {"postgresql": _save_statement(pg_insert), "sqlite": _save_statement(sqlite_insert)}
_BY_KEY = select(*ConversationMessage.__table__.c).where(
    ConversationMessage.message_key == bindparam("message_key")
)


async def save_message(
    session: AsyncSession,
    *,
    message_key: str,
    session_id: str,
    role: str,
    content: str,
    created_at: datetime,
) -> Row[Any]:
    """Insert once per ``message_key``; a second save of the same key returns the first."""
    values: dict[str, Any] = {
        "message_key": message_key,
        "session_id": session_id,
        "role": role,
        "content": content,
        "created_at": created_at,
    }
    dialect = session.get_bind().dialect.name
    stored = (await session.execute(_SAVE[dialect], values)).first()
    if stored is None:  # saved by an earlier run of the same task
        stored = (await session.execute(_BY_KEY, {"message_key": message_key})).first()
    assert stored is not None
    return stored


async def history(session: AsyncSession, *, session_id: str) -> list[ConversationMessage]:
    query = (
        select(ConversationMessage)
        .where(ConversationMessage.session_id == session_id)
        .order_by(ConversationMessage.created_at, ConversationMessage.id)
    )
    return list((await session.scalars(query)).all())


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
