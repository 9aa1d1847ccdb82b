"""Error bodies, so the OpenAPI schema says what a refusal looks like: FastAPI's
``{"detail": "…"}`` for everything but request validation, which is ``{"detail": [{"loc",
"msg", "type"}, …]}`` naming each field at fault."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrors(BaseModel):
    detail: list[ValidationIssue]
