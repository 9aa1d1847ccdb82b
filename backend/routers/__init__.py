"""One module per resource; ``api_router`` gathers them. Routers never touch the database."""

from fastapi import APIRouter

from backend.routers import (
    conversations,
    data_sync,
    events,
    exports,
    health,
    metrics,
    notifications,
    schedules,
    system,
    tasks,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(tasks.router)
api_router.include_router(tasks.legacy_router)
api_router.include_router(conversations.router)
api_router.include_router(conversations.legacy_router)
api_router.include_router(data_sync.router)
api_router.include_router(exports.router)
api_router.include_router(schedules.router)
api_router.include_router(events.router)
api_router.include_router(notifications.router)
api_router.include_router(system.router)
api_router.include_router(metrics.router)
