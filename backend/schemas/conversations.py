"""Conversation requests and responses. Validation here is what makes bad input a 422
naming its field, before anything is submitted."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, Field

MAX_CONTENT_BYTES = 64 * 1024
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

SessionIdPath = Annotated[
    str, Path(pattern=SESSION_ID_PATTERN, description="letters, digits and _ . : - (≤ 64)")
]


def _content(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if len(value.encode()) > MAX_CONTENT_BYTES:
        raise ValueError(f"must be at most {MAX_CONTENT_BYTES} bytes of UTF-8")
    return value


Content = Annotated[str, AfterValidator(_content)]


class MessageIn(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: Content


class Message(BaseModel):
    role: str
    content: str
    created_at: datetime


class Conversation(BaseModel):
    session_id: str
    messages: list[Message]


class RunIn(BaseModel):
    user_input: Content
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)


class RunOut(BaseModel):
    session_id: str
    reply: str
    task_id: str
