"""Who answers in ``/run``: a small interface, a deterministic offline default, and the
loader for the dotted path in ``RESPONDER`` (``package.module:ClassName``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol


class Turn(Protocol):
    role: str
    content: str


class Responder(Protocol):
    async def reply(self, *, session_id: str, history: Sequence[Turn], user_input: str) -> str:
        """The assistant's answer to ``user_input``; ``history`` ends with that user turn."""
        ...


class EchoResponder:
    """Deterministic and offline (no model, no network): the same history gives the same
    reply, so a re-run task stores exactly what the first run would have."""

    async def reply(self, *, session_id: str, history: Sequence[Turn], user_input: str) -> str:
        turns = sum(1 for t in history if t.role == "user")
        words = len(user_input.split())
        return f"You said: {user_input} (turn {turns} of session {session_id}, {words} words)"


@lru_cache
def load_responder(path: str) -> Responder:
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    factory = getattr(importlib.import_module(module_name), attr)
    responder: Responder = factory()
    return responder
