"""Path and query parameters of the routes, with their validation: FastAPI's ``Path`` and
``Query`` live here, so ``backend/schemas`` stays plain pydantic that task bodies may
use to build their answers (one definition of each response shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from backend.constants import CONVERSATION_PAGE_MAX, DATASET_PATTERN
from backend.schemas.conversations import CURSOR_PATTERN, SESSION_ID_PATTERN
from backend.schemas.tasks import TASK_ID_PATTERN

TaskIdPath = Annotated[
    str,
    Path(pattern=TASK_ID_PATTERN, description="a task id (letters, digits and . _ : -, ≤ 64)"),
]
SessionIdPath = Annotated[
    str, Path(pattern=SESSION_ID_PATTERN, description="letters, digits and _ . : - (≤ 64)")
]
DatasetPath = Annotated[str, Path(pattern=DATASET_PATTERN)]
PageLimit = Annotated[
    int,
    Query(
        ge=1,
        le=CONVERSATION_PAGE_MAX,
        description="at most this many messages (a page of long messages may hold fewer)",
    ),
]
PageAfter = Annotated[
    str | None,
    Query(
        pattern=CURSOR_PATTERN,
        description="the `next` of the previous page: start after it (default: the first)",
    ),
]
