"""GET /health: the one route without a token; answers from cached state, never waits on
a dead broker."""

from fastapi import APIRouter

from backend.api.deps import RuntimeDep
from backend.schemas.tasks import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(runtime: RuntimeDep) -> Health:
    h = await runtime.health()
    return Health(
        status="ok" if h.broker_up and h.database_up else "degraded",
        broker="up" if h.broker_up else "down",
        database="up" if h.database_up else "down",
        executor=h.executor,
        workers=h.workers,
    )
