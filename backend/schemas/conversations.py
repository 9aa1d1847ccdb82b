"""Conversation requests and responses. Validation here is what makes bad input a 422
naming its field, before anything is submitted."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from backend.schemas.types import NO_NUL, NOT_BLANK, storable

MAX_CONTENT_CHARS = 64 * 1024
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

# A page cursor (tasks/conversation.py writes it): the digits are bounded so that every
# string this admits is a position the read can use (a time before the year 5200, an id
# that fits a BIGINT), and a schema-valid cursor is never refused.
CURSOR_PATTERN = r"^[0-9]{1,17}-[0-9]{1,18}$"


def _content(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return storable(value)


# 1 to 64 Ki characters, not blank, no NUL, valid Unicode. The schema says so too (the
# pattern and the NUL rule are checked by the validator, with readable messages).
Content = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_CONTENT_CHARS,
        json_schema_extra={"pattern": NOT_BLANK, **NO_NUL},
        description=f"the text: not blank, at most {MAX_CONTENT_CHARS} characters",
    ),
    AfterValidator(_content),
]


class MessageIn(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: Content


class Message(BaseModel):
    role: str
    content: str
    created_at: datetime


class Conversation(BaseModel):
    """One page of a session's history, oldest first (the whole of a short one)."""

    session_id: str
    messages: list[Message]
    next: str | None = Field(
        default=None,
        description="pass as `after` for the messages that follow this page (also those "
        "that arrive later); null only for an empty session read from its start",
    )
    has_more: bool = Field(
        default=False, description="more messages followed this page when it was read"
    )


class RunIn(BaseModel):
    user_input: Content
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)


class RunOut(BaseModel):
    session_id: str
    reply: str
    task_id: str
