"""Notification queries: record once per (task, state), list newest first, purge."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from backend.db.models import Notification
from backend.db.prepared import Prepared

PURGE_BATCH = 5_000

LEVELS = {"SUCCESS": "info", "REVOKED": "warning", "FAILURE": "error"}


def describe(task_name: str, state: str, error: dict[str, Any] | None) -> str:
    return task_name + message_tail(state, error)


def message_tail(state: str, error: dict[str, Any] | None) -> str:
    """What a notification's message says after the task's name (PostgreSQL's finish
    writes the name from the ledger row and this beside it, in one statement)."""
    if state == "SUCCESS":
        return " succeeded"
    if state == "REVOKED":
        return " was cancelled"
    reason = (error or {}).get("message") or "no reason given"
    return f" failed: {reason}"


def values_for(
    *, task_id: str, task_name: str, state: str, error: dict[str, Any] | None, at: datetime
) -> dict[str, Any]:
    """The row for a task that ended in ``state``."""
    return {
        "task_id": task_id,
        "task_name": task_name,
        "state": state,
        "level": level_of(state),
        "message": describe(task_name, state, error),
        "error": error,
        "created_at": at,
    }


def level_of(state: str) -> str:
    return LEVELS.get(state, "info")


def recorded(new_id: int, values: dict[str, Any]) -> dict[str, Any]:
    """The notification ``values_for`` made, as stored under ``new_id``, as a dict."""
    return as_dict(SimpleNamespace(id=new_id, **values))


def as_dict(row: Any) -> dict[str, Any]:
    """A notification as the API and the events stream show it."""
    return {
        "id": row.id,
        "task_id": row.task_id,
        "task_name": row.task_name,
        "state": row.state,
        "level": row.level,
        "message": row.message,
        "error": row.error,
        "created_at": row.created_at.isoformat(),
    }


def _record_statement(insert: Any) -> Any:
    columns = ("task_id", "task_name", "state", "level", "message", "error", "created_at")
    return (
        insert(Notification)
        .values({name: bindparam(name) for name in columns})
        .on_conflict_do_nothing()
        .returning(Notification.id)
    )


# Built once per dialect: it runs in the transaction that ends every task.
_RECORD = {"postgresql": _record_statement(pg_insert), "sqlite": _record_statement(sqlite_insert)}
_RECORDS = {dialect: Prepared(statement) for dialect, statement in _RECORD.items()}


async def record_in(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any] | None:
    """Insert on a connection inside the caller's transaction (the one that ends the task);
    the notification as a dict, or None when this (task, state) was already recorded."""
    rows = await _RECORDS[conn.dialect.name].rows(conn, values)
    new_id = rows[0][0] if rows else None
    if new_id is None:
        return None
    return recorded(new_id, values)


async def latest(
    session: AsyncSession, *, limit: int, state: str | None = None
) -> list[Notification]:
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    if state:
        query = query.where(Notification.state == state)
    return list((await session.scalars(query)).all())


async def purge_older_than(
    session: AsyncSession, *, cutoff: datetime, batch: int = PURGE_BATCH
) -> int:
    ids = select(Notification.id).where(Notification.created_at < cutoff).limit(batch)
    result = await session.execute(
        delete(Notification).where(Notification.id.in_(ids.scalar_subquery()))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
