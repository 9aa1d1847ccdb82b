"""5. Recovery: the worker restarted (by the operator's command) under a long sync; the
task must still finish, each row synced once, and a worker must answer again. Skipped
without --restart-worker-cmd: the script does not know how a deployment runs its workers."""

from __future__ import annotations

import time
from typing import Any

from .common import FINAL, RUNNING, WORKER_HINT, Fail, Skip, describe, error_text
from .context import Context


def step(ctx: Context) -> None:
    group = ctx.group(5, "Recovery")
    args = ctx.args
    names = [
        ("long sync under way", "running when the restart begins"),
        ("restart the worker (command)", "exit 0"),
        ("task finishes after the restart", f"SUCCESS within {args.recovery_timeout:g} s"),
        ("every row synced once", f"{args.recovery_rows:,} records"),
        ("worker answers after the restart", "200 within 5 s"),
    ]
    why = None
    if ctx.not_ready:
        why = f"not run: {ctx.not_ready}"
    elif not args.restart_worker_cmd:
        why = "no --restart-worker-cmd given"
    if why:
        for name, target in names:
            ctx.skip(group, name, target, why)
        return
    rows = args.recovery_rows
    dataset = f"status-check-{ctx.run_id}-long"
    task: dict[str, Any] = {}

    def under_way() -> str:
        file_id = ctx.generate_and_register(rows, "-long")
        body, _ = ctx.api.submit_sync(file_id)
        task["id"] = task_id = str(body["task_id"])
        waited = ctx.api.wait_task(
            task_id,
            args.task_timeout,
            f"long sync {task_id[:8]}",
            until=lambda s: (
                s["state"] in FINAL
                or (s["state"] in RUNNING and ((s.get("progress") or {}).get("current") or 0) > 0)
            ),
        )
        if waited.timed_out:
            raise Fail(
                f"still {waited.state} after {args.task_timeout:g} s; {WORKER_HINT}",
                waited.state,
            )
        if waited.state in FINAL:
            task.clear()
            raise Fail(
                f"the sync ended {waited.state} before the restart; raise --recovery-rows "
                "so that it is still running when the worker is restarted",
                waited.state,
            )
        return f"task {task_id}: {describe(waited.status or {})}"

    if not ctx.check(group, names[0][0], names[0][1], under_way):
        for name, target in names[1:]:
            ctx.skip(group, name, target, "no long sync was running")
        return
    restarted_at = time.monotonic()
    ctx.check(
        group,
        names[1][0],
        names[1][1],
        lambda: ctx.run_command(args.restart_worker_cmd, "the restart command"),
    )
    task_id = task["id"]
    final: dict[str, Any] = {}

    def finishes() -> str:
        waited = ctx.api.wait_task(task_id, args.recovery_timeout, f"long sync {task_id[:8]}")
        after = time.monotonic() - restarted_at
        if waited.timed_out:
            raise Fail(
                f"still {describe(waited.status or {})} {after:.0f} s after the restart: the "
                "task was not recovered (is a worker running again? recovery waits for the "
                "task's lease, LEASE_SECONDS, to expire)",
                waited.state,
            )
        final.update(waited.status or {})
        if waited.state != "SUCCESS":
            raise Fail(f"ended {waited.state}: {error_text(waited.status)}", waited.state)
        attempts = final.get("attempts")
        how = "resumed on a new attempt" if (attempts or 0) > 1 else "not interrupted"
        return f"SUCCESS {after:.1f} s after the restart, attempt {attempts} ({how})"

    ctx.check(group, names[2][0], names[2][1], finishes)

    def once() -> str:
        if final.get("state") != "SUCCESS":
            raise Skip("the task did not succeed")
        r = final.get("result") or {}
        info = ctx.api.read(f"/api/data-sync/datasets/{dataset}")
        count = (info or {}).get("record_count")
        text = f"{count} records; {r.get('rows_read')} read, {r.get('inserted')} inserted"
        if count != rows or r.get("rows_read") != rows or r.get("inserted") != rows:
            raise Fail(f"expected {rows} rows read, inserted and stored, once each", text)
        return text

    ctx.check(group, names[3][0], names[3][1], once)

    ctx.check(group, names[4][0], names[4][1], lambda: ctx.api.worker_answers(WORKER_HINT))
