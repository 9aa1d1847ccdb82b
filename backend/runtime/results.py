"""The size limit on task results (``MAX_RESULT_BYTES``).

The ledger is the one store of results, and every status poll of a task reads its result
back: a result of any size would cost its size in the database, in every poll and in the
API's memory, again and again. So a result is measured before it is stored, the way the
ledger's JSON column will write it, and a result over the limit is never stored: its task
ends FAILURE with a ``ResultTooLarge`` error that says how large it was and what the limit
is. (A readable failure beats a truncated result, which a client would take for the
whole answer; and retrying cannot help, so it is not a transient error.)

Reads that can return a lot (a conversation's history) page instead, filling each page up
to the limit and no further (``json_size`` is the measure they use), so they never reach
this error in normal use.
"""

from __future__ import annotations

import json
from typing import Any


class ResultTooLarge(Exception):
    """A task's result is larger, as JSON, than the settings allow; it is not stored."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the result is {size:,} bytes as JSON; at most {limit:,} are stored (MAX_RESULT_BYTES)"
        )
        self.size = size
        self.limit = limit


def json_size(value: Any) -> int:
    """The bytes ``value`` takes as JSON in the ledger: SQLAlchemy's JSON type writes it
    with ``json.dumps`` (ASCII only, ``\\uXXXX`` escapes), so this counts the same text.

    Raises TypeError for a value that is not JSON, which the ledger could not store either.
    """
    return len(json.dumps(value))


def check_result_size(result: Any, limit: int) -> None:
    """Raise ResultTooLarge when ``result`` would take more than ``limit`` bytes."""
    size = json_size(result)
    if size > limit:
        raise ResultTooLarge(size, limit)
