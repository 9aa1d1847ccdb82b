"""The plain pattern's table and its sync SQLAlchemy session, one engine per process.

The engine is made on first use, so each Celery prefork child opens its own connections.
SQLite gets the same pragmas as syncq's engine (WAL, busy timeout, synchronous=NORMAL):
the comparison is of the two patterns, not of journal modes.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import DateTime, Engine, Integer, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "plain_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # Set by the worker when it stores the row: the benchmark's "stored" time.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 15})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


@cache
def session_factory(pid: int) -> sessionmaker[Session]:
    return sessionmaker(make_engine(os.environ["PLAIN_DATABASE_URL"]))


def new_session() -> Session:
    return session_factory(os.getpid())()
