"""Which errors mean "the same work, tried again a little later, may well succeed".

The ledger and most bodies reach the database through SQLAlchemy, which wraps a dropped
connection or a busy SQLite file as ``OperationalError``. The sync's hot path talks to
the driver itself (see ``db.queries.data_sync``), so its errors can arrive unwrapped:
sqlite3's "database is locked" and asyncpg's deadlock, serialization and lost-connection
errors. Classifying by SQLSTATE and SQLite's error code gives one rule for both paths;
treating these as permanent ended a sync FAILURE halfway through a file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, OperationalError

from backend.runtime.context import TransientError

# Errors whose type alone says "try again".
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    OperationalError,
    ConnectionError,
    TimeoutError,
)

# SQLSTATE prefixes that say the same: 08 connection exception, 40 transaction rollback
# (serialization failure, deadlock), 53300 too many connections, 55P03 lock not
# available, 57P01 to 57P03 the server shutting down or not accepting connections yet.
_TRANSIENT_SQLSTATES = ("08", "40", "53300", "55P03", "57P01", "57P02", "57P03")

# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or the driver error under it) is worth another attempt."""
    for error in _causes(exc):
        if isinstance(error, _TRANSIENT_TYPES):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlite3.OperationalError):
            code = getattr(error, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
                return True
            if code is None and "locked" in str(error):
                return True
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str) and state.startswith(_TRANSIENT_SQLSTATES):
            return True
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps: SQLAlchemy's ``orig`` and explicit ``raise … from``.

    Not ``__context__``: an error raised *while handling* a transient one (a BadFile in an
    ``except`` block) is the body's own verdict and must stay permanent."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
