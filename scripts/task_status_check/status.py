"""3. Status: the task submitted in step 2 followed to its end through the status route,
its progress and result checked against the file, and an unknown id answered 404."""

from __future__ import annotations

import uuid
from typing import Any

from .common import Fail, Skip, error_text
from .context import Context


def step(ctx: Context) -> None:
    group = ctx.group(3, "Status")
    names = [
        ("reaches a final state", f"SUCCESS within {ctx.args.task_timeout:g} s"),
        ("progress reported", "current/total of rows"),
        ("sync result", "every row read and stored"),
        ("unknown task id", "404"),
    ]
    if ctx.not_ready or ctx.sync_task_id is None:
        why = f"not run: {ctx.not_ready}" if ctx.not_ready else "no task was submitted"
        for name, target in names:
            ctx.skip(group, name, target, why)
        return
    task_id = ctx.sync_task_id
    final: dict[str, Any] = {}

    def reaches_final() -> str:
        waited = ctx.api.wait_task(task_id, ctx.args.task_timeout, f"task {task_id[:8]}")
        trail = " -> ".join(waited.states)
        if waited.timed_out:
            raise Fail(
                f"still {waited.state} after {ctx.args.task_timeout:g} s; is a worker "
                "consuming the data_sync queue?",
                trail,
            )
        final.update(waited.status or {})
        if waited.state != "SUCCESS":
            raise Fail(f"ended {waited.state}: {error_text(waited.status)}", trail)
        return f"{waited.state} in {waited.elapsed:.1f} s ({trail})"

    ctx.check(group, names[0][0], names[0][1], reaches_final)

    def progress() -> str:
        if not final:
            raise Skip("the task did not finish")
        p = final.get("progress")
        if not p:
            raise Fail("the finished sync has no progress", "none")
        text = f"{p.get('current')}/{p.get('total')}"
        if p.get("current") != p.get("total"):
            raise Fail("a finished sync should have its progress at its total", text)
        return f"{text}: {p.get('message')}"

    ctx.check(group, names[1][0], names[1][1], progress)

    def result() -> str:
        if not final or final.get("state") != "SUCCESS":
            raise Skip("the task did not succeed")
        r = final.get("result") or {}
        text = (
            f"{r.get('rows_read')} read: {r.get('inserted')} inserted, {r.get('updated')} "
            f"updated, {r.get('unchanged')} unchanged, {r.get('rejected')} rejected"
        )
        stored = sum(int(r.get(k) or 0) for k in ("inserted", "updated", "unchanged"))
        if ctx.file_rows is not None and (
            r.get("rows_read") != ctx.file_rows or stored != ctx.file_rows
        ):
            raise Fail(f"the generated file has {ctx.file_rows} rows", text)
        return text

    ctx.check(group, names[2][0], names[2][1], result)

    def unknown() -> str:
        response = ctx.api.http.get(f"/api/data-sync/task-status/{uuid.uuid4()}")
        if response.status_code != 404:
            raise Fail(
                f"an unknown id answered {response.status_code}, not 404",
                f"HTTP {response.status_code}",
            )
        return "404"

    ctx.check(group, names[3][0], names[3][1], unknown)
