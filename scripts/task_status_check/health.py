"""1. Health: is there anything to check at all? When the API, its database, the token or
the worker is missing, this step says which (with the hint to fix it) and leaves the reason
in ``ctx.not_ready``, so that every later step is skipped with it instead of failing."""

from __future__ import annotations

from typing import Any

import httpx

from .common import API_HINT, DATABASE_HINT, REDIS_HINT, TOKEN_HINT, WORKER_HINT, Fail, detail
from .context import Context


def step(ctx: Context) -> None:
    group = ctx.group(1, "Health")
    health: dict[str, Any] = {}

    def api() -> str:
        try:
            # Without the token: /health is open, so a refused token shows in the next check.
            response = httpx.get(f"{ctx.args.base_url}/health", timeout=ctx.args.http_timeout)
        except httpx.HTTPError as exc:
            ctx.not_ready = "the API is not answering"
            raise Fail(ctx.api.http_reason(exc), "not answering") from None
        if response.status_code != 200:
            ctx.not_ready = "the API's /health is not 200"
            raise Fail(
                f"GET /health answered {response.status_code}: {detail(response)}; {API_HINT}",
                f"HTTP {response.status_code}",
            )
        health.update(response.json())
        result = (
            f"{health.get('status')}: broker {health.get('broker')}, database "
            f"{health.get('database')}, executor {health.get('executor')}, "
            f"workers {health.get('workers')}"
        )
        hints = []
        if health.get("broker") != "up":
            hints.append(REDIS_HINT + " (tasks run on the API's local executor meanwhile)")
        if health.get("database") != "up":
            hints.append(DATABASE_HINT)
            ctx.not_ready = "the API's database is down"
        if hints:
            raise Fail("; ".join(hints), result)
        return result

    ctx.check(group, "GET /health", 'status "ok"', api)
    if ctx.not_ready:
        ctx.skip(group, "worker round-trip", "200 within 5 s", ctx.not_ready)
        return

    def worker() -> str:
        response = ctx.api.http.get(
            "/api/tasks/health-check", timeout=max(ctx.args.http_timeout, 15)
        )
        if response.status_code == 200:
            body = response.json()
            return f"worker {body.get('worker')} answered in {body.get('latency_ms')} ms"
        if response.status_code == 401:
            ctx.not_ready = "the token was refused"
            raise Fail(f"401: {detail(response)}; {TOKEN_HINT}", "HTTP 401")
        if response.status_code == 503:
            ctx.not_ready = "no worker answered the health check"
            hint = REDIS_HINT if health.get("broker") != "up" else WORKER_HINT
            raise Fail(f"503: {detail(response)}; {hint}", "no worker answered")
        ctx.not_ready = f"the health check answered {response.status_code}"
        raise Fail(f"{response.status_code}: {detail(response)}", f"HTTP {response.status_code}")

    ctx.check(group, "worker round-trip", "200 within 5 s", worker)
