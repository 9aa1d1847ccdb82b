"""scripts/test_celery_task_status.py run against the real stack, as an operator would run
it: every step (recovery and degraded mode included) passes against a healthy stack, and
with no worker running the health step fails with a hint and the exit status is 1."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import StartWorker
from tests.support import ROOT, TOKEN, Api, RedisServer, Worker, redis_server_binary, wait_for

SCRIPT = ROOT / "scripts" / "test_celery_task_status.py"
# Small batches, so the recovery step's long sync is still running when its worker is killed.
WORKER_ENV = {"SYNC_BATCH_SIZE": "500"}


def run_script(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "REDIS_"))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def items(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(g["name"], i["item"]): i for g in report["groups"] for i in g["items"]}


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"


def test_with_no_worker_the_health_step_fails_with_a_hint_and_exit_status_1(
    client: httpx.Client, api: Api, redis_up: RedisServer
) -> None:
    proc = run_script(
        "--base-url", api.base_url, "--redis-url", redis_up.url, "--json",
        timeout=120, env={"API_TOKEN": TOKEN},
    )  # fmt: skip

    assert proc.returncode == 1, explain(proc)
    report = json.loads(proc.stdout)
    found = items(report)
    assert report["passed"] is False
    assert found[("Health", "GET /health")]["status"] == "passed"
    worker = found[("Health", "worker round-trip")]
    assert worker["status"] == "failed"
    assert "celery -A backend.celery_app worker" in worker["reason"]
    assert found[("Performance", "Redis memory (INFO memory)")]["status"] == "passed"
    later = [i for (group, _), i in found.items() if group not in ("Health", "Performance")]
    assert later and all(i["status"] == "skipped" for i in later)
    assert found[("Submit", "submit a sync")]["reason"] == (
        "not run: no worker answered the health check"
    )
    assert report["summary"]["failed"] == 1
    assert "worker round-trip" in proc.stderr  # progress went to stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    nothing_written = {"DATA_DIR": str(tmp_path / "empty")}  # no launcher's token to fall back on
    no_token = run_script("--base-url", url, timeout=30, env=nothing_written)
    assert no_token.returncode == 2 and "API_TOKEN" in no_token.stderr
    half = run_script(
        "--base-url", url, "--token", TOKEN, "--allow-redis-stop-cmd", "true",
        timeout=30,
    )  # fmt: skip
    assert half.returncode == 2 and "--redis-start-cmd" in half.stderr


def test_a_bare_run_takes_the_token_and_redis_the_launcher_wrote(
    client: httpx.Client, api: Api, redis_up: RedisServer, tmp_path: Path
) -> None:
    """Its users run the script with no arguments where ./scripts/start.sh runs: with no
    API_TOKEN it reads DATA_DIR/api_token, and the Redis URL from the settings, and says
    so. (Only --base-url is given: the test's API is not on port 8000.)"""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "api_token").write_text(TOKEN + "\n")
    env = {"DATA_DIR": str(data_dir), "REDIS_URL": redis_up.url}
    proc = run_script("--base-url", api.base_url, "--json", timeout=120, env=env)

    assert f"token: from {data_dir / 'api_token'}" in proc.stderr, explain(proc)
    report = json.loads(proc.stdout)
    found = items(report)
    assert found[("Health", "GET /health")]["status"] == "passed", explain(proc)
    assert found[("Performance", "Redis memory (INFO memory)")]["status"] == "passed"


class WorkerRestarts:
    """What the script's --restart-worker-cmd asks for, done by the test: the command
    writes a request file and waits; a thread here kill -9s the worker's process group,
    starts a new worker through the fixture (so it is stopped after the test), and
    answers. The command then returns, and the script checks the task finishes."""

    def __init__(self, folder: Path, doomed: Worker, start_worker: StartWorker) -> None:
        self.request, self.answer = folder / "restart-requested", folder / "restart-done"
        self.doomed, self.start_worker = doomed, start_worker
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.command_file = folder / "restart_worker.py"
        self.command_file.write_text(
            "import pathlib, sys, time\n"
            f"request, answer = pathlib.Path({str(self.request)!r}), "
            f"pathlib.Path({str(self.answer)!r})\n"
            "request.touch()\n"
            "deadline = time.monotonic() + 90\n"
            "while not answer.exists():\n"
            "    if time.monotonic() > deadline:\n"
            "        sys.exit('no new worker within 90 s')\n"
            "    time.sleep(0.05)\n"
            "print(answer.read_text())\n"
        )
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def command(self) -> str:
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(self.command_file))}"

    def _serve(self) -> None:
        try:
            while not self.request.exists():
                if self.stopping.wait(0.05):
                    return
            self.doomed.kill()
            new = self.start_worker(concurrency=2, env=WORKER_ENV)
            self.answer.write_text(f"killed the old worker; {new.node} serving")
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.errors.append(exc)
            self.answer.write_text(f"restart failed: {exc!r}")

    @contextlib.contextmanager
    def running(self) -> Iterator[WorkerRestarts]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.thread.join(120)


def redis_commands(server: RedisServer, folder: Path) -> tuple[str, str]:
    """Shell commands that stop the test's Redis and start one again on its port."""
    if shutil.which("redis-cli"):
        stop = f"redis-cli -p {server.port} shutdown nosave"
    else:
        code = f"import redis; redis.Redis(port={server.port}).shutdown(nosave=True)"
        stop = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    start = shlex.join([
        redis_server_binary(), "--port", str(server.port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(folder),
        "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"),
        "--logfile", str(folder / "redis.log"),
    ])  # fmt: skip
    return stop, start


def give_redis_back_to_the_fixture(server: RedisServer) -> None:
    """After the script stopped the fixture's Redis and started its own (daemonized) one on
    the same port: stop that one and start the fixture's again, so the next tests find
    the Redis they know."""
    if server.alive:
        return  # the script never stopped it
    client = redis.Redis(port=server.port, socket_connect_timeout=1, socket_timeout=2)
    with contextlib.suppress(redis.RedisError):
        client.shutdown(nosave=True)

    def port_free() -> bool:
        try:
            client.ping()
        except redis.ConnectionError:
            return True
        return False

    wait_for(port_free, 15, what="the script's Redis to stop")
    client.close()
    server.start()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_step_passes_against_the_running_stack(
    client: httpx.Client,
    api: Api,
    redis_up: RedisServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    doomed = start_worker(concurrency=2, env=WORKER_ENV)
    restarts = WorkerRestarts(tmp_path, doomed, start_worker)
    stop_redis, start_redis = redis_commands(redis_up, tmp_path)
    report_file = tmp_path / "report.json"

    with restarts.running():
        try:
            proc = run_script(
                "--base-url", api.base_url,
                "--token", TOKEN,
                "--redis-url", redis_up.url,
                "--restart-worker-cmd", restarts.command,
                "--recovery-rows", "150000",
                "--recovery-timeout", "240",
                "--allow-redis-stop-cmd", stop_redis,
                "--redis-start-cmd", start_redis,
                "--latency-samples", "20",
                # reported, not judged: a busy 2-core test machine is no latency benchmark
                "--latency-target-ms", "10000",
                "--concurrency-levels", "10,100",
                "--json-out", str(report_file),
                timeout=700,
            )  # fmt: skip
        finally:
            give_redis_back_to_the_fixture(redis_up)

    assert not restarts.errors, restarts.errors
    assert restarts.answer.exists(), "the script never ran the restart command"
    report = json.loads(report_file.read_text())
    found = items(report)
    failed = {" / ".join(k): v for k, v in found.items() if v["status"] != "passed"}
    assert not failed, f"{json.dumps(failed, indent=1)}\n{explain(proc)}"
    assert proc.returncode == 0, explain(proc)

    assert [g["name"] for g in report["groups"]] == [
        "Health", "Submit", "Status", "Cancel", "Recovery", "Performance", "Degraded mode",
    ]  # fmt: skip
    recovered = found[("Recovery", "task finishes after the restart")]["result"]
    assert "resumed on a new attempt" in recovered
    assert found[("Recovery", "every row synced once")]["result"].startswith("150000 records")
    assert "queues idle" in found[("Degraded mode", "stop Redis (command)")]["result"]
    assert " on local " in found[("Degraded mode", "submit with Redis down")]["result"]
    assert "on celery" in found[("Degraded mode", "Celery takes over again")]["result"]
    assert found[("Performance", "100 concurrent tasks")]["result"].startswith("100/100 SUCCESS")

    # The readable report: a table per group, and the verdict last.
    for title in ("1. Health", "5. Recovery", "7. Degraded mode"):
        assert f"\n{title}\n  item " in proc.stdout
    verdict = f"PASSED: {len(found)} passed, 0 failed, 0 skipped"
    assert proc.stdout.rstrip().splitlines()[-1].startswith(verdict)
    # Progress was visible while it ran.
    assert "PROGRESS" in proc.stderr and "running the restart command" in proc.stderr
