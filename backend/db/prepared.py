"""Hot statements compiled once and run on SQLite's own driver.

A worker's short task runs four statements inside the one transaction that holds
SQLite's write lock (claim, the body's write, finish, notification). Through
``AsyncConnection.execute`` the finish took 61 µs (SQLAlchemy's cache lookup, execution
context, greenlet switches, result wrapping around ~5 µs of sqlite3), this way 24 µs
(5,000 in a loop). SQLAlchemy still writes the SQL and supplies each column type's own
bind and result conversions, once; only the per-call machinery is skipped, so the values
in the database are exactly what ``execute`` would have written (tests/test_prepared.py).
The API's ledger insert is the other user: a submission's one write, on the request path.

``rows`` runs on SQLite only, and only for connections whose driver is the inline one
(db/sqlite_inline.py: nothing suspends, so the statement is as atomic as SQLAlchemy's);
everything else goes through ``execute`` unchanged. ``bind_many`` also serves PostgreSQL:
the API's insert, one ``executemany`` on asyncpg (runtime/ledger.py's Inserter).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import UpdateBase

from backend.db.sqlite_inline import InlineConnection

Convert = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # (parameter name, its fixed value when the statement holds one, its conversion)
    params: Sequence[tuple[str, Any, Convert]]
    results: Sequence[Convert]


class Prepared:
    """One INSERT/UPDATE (… RETURNING), runnable on an inline SQLite connection."""

    def __init__(self, statement: UpdateBase) -> None:
        self.statement = statement
        self._compiled: dict[type[Dialect], _Compiled] = {}

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The RETURNING rows, converted as SQLAlchemy would; falls back to ``execute``
        where the driver is not the inline SQLite one."""
        driver = _driver(conn) if conn.dialect.name == "sqlite" else None
        if not isinstance(driver, InlineConnection):
            return [tuple(row) for row in await conn.execute(self.statement, dict(params))]
        compiled = self._compile(conn.dialect)
        cursor = await driver.execute(compiled.sql, _bound(compiled.params, params))
        return [_converted(compiled.results, row) for row in await cursor.fetchall()]

    def run_many(
        self, raw: sqlite3.Connection, dialect: Dialect, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """An INSERT of ``rows`` on SQLite's own connection, in whatever transaction the
        caller has opened there (no RETURNING)."""
        compiled = self._compile(dialect)
        raw.executemany(compiled.sql, [_bound(compiled.params, row) for row in rows])

    def bind_many(
        self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[str, list[list[Any]]]:
        """The SQL and each row's positional values, converted as SQLAlchemy would: for
        asyncpg's ``executemany`` (atomic by itself outside a transaction block)."""
        compiled = self._compile(dialect)
        return compiled.sql, [_bound(compiled.params, row) for row in rows]

    def _compile(self, dialect: Dialect) -> _Compiled:
        known = self._compiled.get(type(dialect))
        if known is not None:
            return known
        compiled = self.statement.compile(dialect=dialect)
        params = [
            (name, bind.value, bind.type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()
            for bind in (compiled.binds[name],)
        ]
        results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in self.statement.exported_columns
        ]
        made = self._compiled[type(dialect)] = _Compiled(compiled.string, params, results)
        return made


def _driver(conn: AsyncConnection) -> Any:
    """The DBAPI driver's connection under ``conn``, or None when SQLAlchemy would first
    have to (re)connect. ``get_raw_connection`` costs a greenlet hop, ~19 µs (measured),
    for what a live connection holds as an attribute: three of them a short task, while
    it holds SQLite's write lock."""
    sync = conn.sync_connection
    if sync is None or sync.closed or sync.invalidated:
        return None
    return sync.connection.driver_connection


def _bound(params: Sequence[tuple[str, Any, Convert]], values: Mapping[str, Any]) -> list[Any]:
    bound = []
    for name, fixed, convert in params:
        value = values.get(name, fixed)
        bound.append(convert(value) if convert else value)
    return bound


def _converted(converts: Sequence[Convert], row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(convert(v) if convert else v for convert, v in zip(converts, row, strict=True))
