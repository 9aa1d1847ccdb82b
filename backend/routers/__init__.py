"""One module per resource; ``api_router`` gathers them. Routers never touch the database."""

from fastapi import APIRouter

from backend.routers import conversations, data_sync, health, schedules, tasks

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(tasks.router)
api_router.include_router(tasks.legacy_router)
api_router.include_router(conversations.router)
api_router.include_router(conversations.legacy_router)
api_router.include_router(data_sync.router)
api_router.include_router(schedules.router)
