"""Chat history: one row per message, ordered within its session by arrival."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.models.base import Base, UTCDateTime

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class ConversationMessage(Base):
    __tablename__ = "conversation_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The natural key that makes a save idempotent: the saving task's id (and the role, for
    # the two turns /run stores in one task). A redelivered save inserts nothing.
    message_key: Mapped[str] = mapped_column(String(80), unique=True)
    session_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # When the API received the message: the order of a session is the order of arrival,
    # not the order in which workers happened to run the saves.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_conversation_messages_session_order", "session_id", "created_at", "id"),
        Index("ix_conversation_messages_created_at", "created_at"),
    )
