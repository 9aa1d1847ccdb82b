"""Which errors a task retries (runtime/transient.py): pure classification, on errors the
drivers really raise where a test can make them cheaply."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg.exceptions
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from backend.files.readers import BadFile
from backend.runtime.context import TransientError
from backend.runtime.transient import is_transient


def _locked_error(tmp_path: Path) -> sqlite3.OperationalError:
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(tmp_path / "db.sqlite", timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        holder.close()
        other.close()
    raise AssertionError("the second writer was not refused")


def test_sqlites_database_is_locked_from_the_driver_is_transient(tmp_path: Path) -> None:
    assert is_transient(_locked_error(tmp_path))


def test_a_missing_table_from_the_driver_is_not(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        conn.execute("SELECT * FROM nowhere")
    except sqlite3.OperationalError as exc:
        assert not is_transient(exc)
    finally:
        conn.close()


def test_asyncpg_deadlock_serialization_and_lost_connections_are_transient() -> None:
    for error in (
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    ):
        assert is_transient(error), error


def test_a_wrapped_driver_error_is_judged_by_what_it_wraps() -> None:
    try:
        try:
            raise asyncpg.exceptions.SerializationError("could not serialize access")
        except asyncpg.exceptions.SerializationError as inner:
            raise DBAPIError("INSERT …", None, inner) from inner
    except DBAPIError as wrapped:
        assert is_transient(wrapped)


def test_constraint_violations_and_the_bodys_own_verdicts_are_permanent() -> None:
    assert not is_transient(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_transient(IntegrityError("INSERT …", None, Exception("UNIQUE")))
    assert not is_transient(BadFile("not a CSV"))
    try:
        try:
            raise OperationalError("SELECT 1", None, Exception("gone"))
        except OperationalError:
            raise BadFile("the header row has no key column") from None
    except BadFile as verdict:
        assert not is_transient(verdict)


def test_what_was_transient_before_still_is() -> None:
    for error in (
        TransientError("later"),
        OperationalError("SELECT 1", None, Exception("gone")),
        ConnectionResetError(),
        TimeoutError(),
    ):
        assert is_transient(error)
