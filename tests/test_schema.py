"""Alembic owns the schema: migrating an empty database yields exactly the models."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from backend.db.engine import make_unpooled_engine
from backend.db.models import Base


def test_migrations_and_models_agree(stack_env: dict[str, str]) -> None:
    async def diff() -> list[object]:
        engine = make_unpooled_engine(stack_env["DATABASE_URL"])
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
                )
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []
