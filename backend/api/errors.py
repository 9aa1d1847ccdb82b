"""One error shape (FastAPI's ``{"detail": ...}``) for everything the runtime can refuse,
and the OpenAPI documentation of those refusals.

A database we cannot reach is 503 with Retry-After, never a 500: nothing was accepted, so
the client must try again. Anything else unexpected is a JSON 500 (logged with its
traceback), never a plain-text one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from backend.runtime import (
    ExecutorFull,
    NoWorkerAnswered,
    TaskAlreadyFinished,
    TaskFailed,
    TaskNotFound,
    UnknownTask,
)
from backend.schemas.errors import ErrorDetail, ValidationErrors

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "string"},
    }
}
_DESCRIPTIONS = {
    400: "the request body cannot be parsed (not UTF-8 JSON, or broken multipart)",
    401: "missing or invalid bearer token",
    404: "not found",
    409: "the task already finished",
    410: "gone: it expired",
    413: "the upload is larger than MAX_UPLOAD_BYTES",
    422: "the request is invalid",
    429: "the broker is down and the local executor is full; retry after Retry-After",
    503: "the database (or the worker a call waits for) is unavailable; retry after Retry-After",
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code answers ``{"detail": "…"}``. A description
    for a code is given as ``e404="no such dataset"``."""
    return {
        code: {
            "model": ErrorDetail,
            "description": descriptions.get(f"e{code}", _DESCRIPTIONS[code]),
        }
        for code in codes
    }


# A 422 that is either FastAPI's field list or a sentence (e.g. a file that cannot be used).
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrors | ErrorDetail, "description": _DESCRIPTIONS[422]}
}


def _error(status: int, detail: str, retry_after: bool = False) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry_after else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _json_safe(value: Any) -> Any:
    """NaN and the infinities, and unpaired surrogates (Python's JSON parser lets all of
    them into a request), as printable strings, so echoing the input back in a 422 cannot
    itself fail."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, 422)

    @app.exception_handler(TaskNotFound)
    async def not_found(_: Request, exc: TaskNotFound) -> JSONResponse:
        return _error(404, f"task {exc.args[0]} not found")

    @app.exception_handler(UnknownTask)
    async def unknown_task(_: Request, exc: UnknownTask) -> JSONResponse:
        return _error(404, f"no task named {exc.args[0]!r}")

    @app.exception_handler(TaskAlreadyFinished)
    async def finished(_: Request, exc: TaskAlreadyFinished) -> JSONResponse:
        return _error(409, f"task already finished with state {exc.run.state}")

    @app.exception_handler(ExecutorFull)
    async def full(_: Request, exc: ExecutorFull) -> JSONResponse:
        return _error(429, str(exc), retry_after=True)

    @app.exception_handler(TaskFailed)
    async def task_failed(_: Request, exc: TaskFailed) -> JSONResponse:
        # The work was accepted and ran, but could not complete (e.g. the database went
        # away under it): the client may try again.
        return _error(503, str(exc), retry_after=True)

    @app.exception_handler(NoWorkerAnswered)
    async def no_worker(_: Request, exc: NoWorkerAnswered) -> JSONResponse:
        return _error(503, str(exc), retry_after=True)

    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _error(503, "database unavailable", retry_after=True)

    for exc_type in (OperationalError, InterfaceError, OSError, TimeoutError):
        app.add_exception_handler(exc_type, database_down)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer is sent.
        return _error(500, "internal error")

    _document_errors(app)


def _document_errors(app: FastAPI) -> None:
    """Add to every operation of the OpenAPI schema the refusals it can give whatever its
    route says: 400 where it takes a body (FastAPI's answer to one it cannot parse), 401
    where a token is required (the operation has ``security``), and 429 and 503, both
    with Retry-After, wherever the runtime is reached (the same set)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorDetail", ErrorDetail.model_json_schema())
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                codes = [400] if "requestBody" in operation else []
                codes += [401, 429, 503] if operation.get("security") else []
                responses = operation.setdefault("responses", {})
                for code in codes:
                    entry: dict[str, Any] = {"description": _DESCRIPTIONS[code], "content": body}
                    if code in (429, 503):
                        entry["headers"] = _RETRY_AFTER
                    responses.setdefault(str(code), entry)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
