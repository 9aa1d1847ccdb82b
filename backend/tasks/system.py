"""System tasks: the worker round-trip, and diagnostics used by benchmarks and checks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from backend.constants import Queue, TaskName
from backend.runtime.context import TaskContext, TransientError
from backend.runtime.registry import Mode, task

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


@task(TaskName.HEALTH_CHECK, queue=Queue.DEFAULT, tracked=False)
async def health_check(ctx: TaskContext) -> dict[str, Any]:
    return {"ok": True, "worker": ctx.runner}


@task(TaskName.NOOP, queue=Queue.DEFAULT, mode=Mode.ATOMIC, submittable=True)
async def noop(ctx: TaskContext) -> None:
    return None


@task(TaskName.SLEEP, queue=Queue.DEFAULT, submittable=True)
async def sleep(ctx: TaskContext, seconds: float = 1.0, steps: int = 10) -> dict[str, Any]:
    """Sleeps in ``steps`` checkpointed slices, reporting progress: a stand-in for any long,
    cancellable unit of work when checking a deployment."""
    steps = max(1, min(int(steps), 10_000))
    for i in range(steps):
        await ctx.checkpoint()
        await asyncio.sleep(float(seconds) / steps)
        await ctx.progress(i + 1, steps, f"slept {i + 1}/{steps}")
    return {"slept": float(seconds), "steps": steps, "attempt": ctx.attempt}


@task(TaskName.FLAKY, queue=Queue.DEFAULT, submittable=True)
async def flaky(ctx: TaskContext, transient_failures: int = 1) -> dict[str, Any]:
    """Fails with a transient error on its first ``transient_failures`` attempts: proves a
    deployment's retry path (state RETRY, backoff, then SUCCESS) end to end."""
    if ctx.attempt <= transient_failures:
        raise TransientError(f"planned transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@task(TaskName.INIT_DATABASE, queue=Queue.DATABASE, submittable=True)
async def init_database(ctx: TaskContext) -> dict[str, Any]:
    """Run the Alembic migrations to head; running it twice changes nothing."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = ctx.settings.database_url
    # env.py runs its own event loop; keep it off this one.
    await asyncio.to_thread(command.upgrade, config, "head")
    return {"revision": ScriptDirectory.from_config(config).get_current_head()}
