"""4. Cancel: a sync cancelled as soon as it is submitted is REVOKED and stays so (a worker
picking it up later must not run it), and a finished task cannot be cancelled (409)."""

from __future__ import annotations

import time

from .common import FINAL, Fail, Skip, detail
from .context import Context

CANCEL_ROWS = 20_000  # big enough that the cancel always lands before the sync ends


def step(ctx: Context) -> None:
    group = ctx.group(4, "Cancel")
    names = [
        ("cancel a sync at once", "202, state REVOKED"),
        ("cancel sticks", f"still REVOKED after {ctx.args.cancel_settle:g} s"),
        ("cancel of a finished task", "409"),
    ]
    if ctx.not_ready:
        for name, target in names:
            ctx.skip(group, name, target, f"not run: {ctx.not_ready}")
        return
    cancelled: dict[str, str] = {}

    def cancel() -> str:
        if ctx.args.file_id is not None or ctx.args.upload is not None:
            if ctx.file_id is None:
                raise Skip("no file to sync")
            file_id = ctx.file_id
        else:
            file_id = ctx.generate_and_register(CANCEL_ROWS, "-cancel")
        body, _ = ctx.api.submit_sync(file_id)
        task_id = str(body["task_id"])
        response = ctx.api.http.delete(f"/api/data-sync/cancel-task/{task_id}")
        if response.status_code == 409:
            raise Fail(
                f"the sync had already finished (409: {detail(response)}) when the cancel "
                "arrived; a bigger file makes this check meaningful",
                "HTTP 409",
            )
        answer = ctx.api.expect(response, 202)
        cancelled["task_id"] = task_id
        if answer.get("state") != "REVOKED":
            raise Fail(f"the cancel answered state {answer.get('state')}", str(answer.get("state")))
        return f"task {task_id} REVOKED"

    ctx.check(group, names[0][0], names[0][1], cancel)

    def sticks() -> str:
        if "task_id" not in cancelled:
            raise Skip("nothing was cancelled")
        time.sleep(ctx.args.cancel_settle)
        status = ctx.api.task_status(cancelled["task_id"])
        if status["state"] != "REVOKED":
            raise Fail(f"the cancelled task is {status['state']} now", str(status["state"]))
        return f"REVOKED, attempts {status.get('attempts')}"

    ctx.check(group, names[1][0], names[1][1], sticks)

    def finished() -> str:
        if ctx.sync_task_id is None:
            raise Skip("no finished task to cancel")
        status = ctx.api.task_status(ctx.sync_task_id)
        if status["state"] not in FINAL:
            raise Skip(f"the submitted task is still {status['state']}")
        response = ctx.api.http.delete(f"/api/data-sync/cancel-task/{ctx.sync_task_id}")
        if response.status_code != 409:
            raise Fail(
                f"cancelling a {status['state']} task answered {response.status_code}",
                f"HTTP {response.status_code}",
            )
        return "409"

    ctx.check(group, names[2][0], names[2][1], finished)
