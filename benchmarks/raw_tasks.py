"""A bare Celery task for the baseline: no ledger, no claim, no event loop.

Loaded into the benchmark's worker with ``--include benchmarks.raw_tasks``.
"""

from backend.celery_app import app


@app.task(name="bench.raw_noop", queue="default")
def raw_noop() -> None:
    return None
