"""Live views for operators: workers (Celery broadcast), queue lengths (Redis) and the
ledger's finishes per minute."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from backend.api.deps import Authenticated, RuntimeDep
from backend.schemas.system import FinishedInMinute, Queues, Throughput, Worker, Workers

router = APIRouter(prefix="/api/system", tags=["system"], dependencies=Authenticated)


@router.get("/workers", response_model=Workers)
async def list_workers(runtime: RuntimeDep) -> Workers:
    """Answers within about a second even when no worker does (their ping is then false)."""
    started = time.perf_counter()
    broker_up, views = await runtime.worker_views()
    return Workers(
        broker="up" if broker_up else "down",
        workers=[Worker.model_validate(asdict(v)) for v in views],
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )


@router.get("/queues", response_model=Queues)
async def list_queues(runtime: RuntimeDep) -> Queues:
    view = await runtime.queue_view()
    return Queues(
        broker="up" if view.broker_up else "down",
        queues=view.queues,
        unacked=view.unacked,
        local_executor={"held": view.local_held, "capacity": view.local_capacity},
    )


@router.get("/throughput", response_model=Throughput)
async def throughput(
    runtime: RuntimeDep, minutes: Annotated[int, Query(ge=1, le=60)] = 30
) -> Throughput:
    """Runs finished per minute (UTC) and final state over the last ``minutes``, counted
    in the ledger; the dashboard's chart. Up to 5 s old."""
    counts = await runtime.finished_per_minute(minutes)
    return Throughput(
        minutes=minutes,
        finished=[FinishedInMinute(minute=m, state=s, count=n) for m, s, n in sorted(counts)],
    )
