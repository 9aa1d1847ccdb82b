"""One error shape (FastAPI's ``{"detail": ...}``) for everything the runtime can refuse.

A database we cannot reach is 503 with Retry-After, never a 500: nothing was accepted, so
the client must try again.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
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

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def _error(status: int, detail: str, retry_after: bool = False) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry_after else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
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
