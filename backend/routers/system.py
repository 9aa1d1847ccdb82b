"""Live views for operators: workers (Celery broadcast) and queue lengths (Redis)."""

from __future__ import annotations

import time
from dataclasses import asdict

from fastapi import APIRouter

from backend.api.deps import Authenticated, RuntimeDep
from backend.runtime.inspect import queue_lengths, workers
from backend.schemas.system import Queues, Worker, Workers

router = APIRouter(prefix="/api/system", tags=["system"], dependencies=Authenticated)


@router.get("/workers", response_model=Workers)
async def list_workers(runtime: RuntimeDep) -> Workers:
    """Answers within about a second even when no worker does (their ping is then false)."""
    started = time.perf_counter()
    views = await workers(runtime.broker)
    return Workers(
        broker="up" if runtime.broker.up else "down",
        workers=[Worker.model_validate(asdict(v)) for v in views],
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )


@router.get("/queues", response_model=Queues)
async def list_queues(runtime: RuntimeDep) -> Queues:
    lengths = await queue_lengths(runtime.broker) if runtime.broker.up else None
    local = runtime.local
    return Queues(
        broker="up" if lengths is not None else "down",
        queues=dict(lengths[0]) if lengths else {},
        unacked=lengths[1] if lengths else None,
        local_executor={
            "held": local.held_count if local else 0,
            "capacity": runtime.settings.local_queue_size,
        },
    )
