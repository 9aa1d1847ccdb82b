"""2. Submit: a file to sync (the operator's, or a generated one whose row count is known,
so step 3 can check every row arrived) and one sync of it, whose task id step 3 follows."""

from __future__ import annotations

from pathlib import Path

from .common import Fail
from .context import Context


def step(ctx: Context) -> None:
    group = ctx.group(2, "Submit")
    if ctx.not_ready:
        ctx.skip(group, "file to sync", "a registered file", f"not run: {ctx.not_ready}")
        ctx.skip(group, "submit a sync", "202 with a task id", f"not run: {ctx.not_ready}")
        return

    def prepare() -> str:
        args = ctx.args
        if args.file_id is not None:
            ctx.file_id = args.file_id
            return f"file {ctx.file_id} (--file-id)"
        if args.upload is not None:
            path: Path = args.upload
            dataset = args.dataset or f"status-check-{ctx.run_id}"
            with path.open("rb") as f:  # streamed, not read into memory
                ctx.file_id = ctx.api.register(
                    f, path.stat().st_size, path.name, dataset, args.key_columns
                )
            return f"file {ctx.file_id} ({path.name} uploaded into {dataset})"
        ctx.file_id = ctx.generate_and_register(args.rows, "")
        ctx.file_rows = args.rows
        return f"file {ctx.file_id} (generated, {args.rows:,} rows)"

    if not ctx.check(group, "file to sync", "a registered file", prepare):
        ctx.skip(group, "submit a sync", "202 with a task id", "no file to sync")
        return

    def submit() -> str:
        assert ctx.file_id is not None
        body, ms = ctx.api.submit_sync(ctx.file_id)
        ctx.sync_task_id = str(body["task_id"])
        if body.get("status") != "PENDING":
            raise Fail(
                f"status {body.get('status')!r}, expected PENDING", f"task {ctx.sync_task_id}"
            )
        return f"task {ctx.sync_task_id} on {body.get('executor')} in {ms:.0f} ms"

    ctx.check(group, "submit a sync", "202 with a task id", submit)
