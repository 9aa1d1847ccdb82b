"""The launcher (scripts/start_celery_services.py) runs the whole stack: embedded Redis,
worker, beat, API and Flower on free ports in a temporary directory; a task shows up in
Flower and on the event stream; a killed worker is restarted; a stop leaves nothing."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
import psutil
import pytest
import redis

from tests.helpers import EventStream, submit, wait_state
from tests.support import ROOT, RedisServer, free_port, redis_server_binary, wait_for

pytestmark = pytest.mark.slow


@dataclass
class Launched:
    proc: subprocess.Popen[str]
    api: str
    flower: str
    data_dir: Path
    redis_port: int
    output: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        return (self.data_dir / "api_token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=15
        )

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.output))

    def processes(self) -> list[psutil.Process]:
        """Every process the launcher started, wherever its process group is."""
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.proc.pid).children(recursive=True)
        return []


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Launched]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "CELERY_", "DATABASE_", "API_"))
    }
    redis_port = free_port()
    env |= {
        "DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",  # nothing there: embedded Redis
        "PYTHONUNBUFFERED": "1",
    }
    api_port, flower_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "start_celery_services.py"),
         "--port", str(api_port), "--flower-port", str(flower_port),
         "--log-dir", str(tmp_path / "logs"), "--concurrency", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    stack = Launched(
        proc,
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{flower_port}",
        tmp_path / "data",
        redis_port,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            stack.output.append(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for(
            lambda: stack.said("Ctrl-C stops everything") or proc.poll() is not None,
            150,
            what="the launcher to be ready",
        )
        assert proc.poll() is None, "\n".join(stack.output[-40:])
        yield stack
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        for p in stack.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_the_launcher_runs_the_stack_and_stops_it_leaving_nothing(launched: Launched) -> None:
    assert launched.said(f"API      {launched.api}")
    assert launched.said(f"Flower   {launched.flower}")
    assert launched.said(f"Token    {launched.token}")
    assert (launched.data_dir / "redis" / "appendonlydir").is_dir()  # embedded, with AOF
    # The token, uploads, the embedded Redis's data and the logs are this user's alone.
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (launched.data_dir, launched.data_dir / "redis", launched.data_dir.parent / "logs")
    }
    assert modes == {"data": 0o700, "redis": 0o700, "logs": 0o700}
    token_file = launched.data_dir / "api_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    with launched.client() as client:
        stream = EventStream(client)
        try:
            task_id = submit(client, "system.sleep", seconds=0.5, steps=2)["task_id"]
            wait_state(client, task_id, "SUCCESS")
            stream.wait_for_state(task_id, "SUCCESS")
        finally:
            stream.close()

        flower = httpx.Client(base_url=launched.flower, auth=("syncq", launched.token), timeout=10)
        workers = wait_for(
            lambda: flower.get("/api/workers", params={"refresh": "true"}).json(),
            30,
            what="Flower to list the worker",
        )
        assert any(name.startswith("worker1@") for name in workers)
        info = wait_for(
            lambda: (r := flower.get(f"/api/task/info/{task_id}")).status_code == 200 and r.json(),
            30,
            what="Flower to know the task",
        )
        assert info["state"] == "SUCCESS" and info["name"] == "system.sleep"
        assert flower.get("/api/workers", auth=("syncq", "wrong")).status_code == 401

    everything = launched.processes()
    assert len(everything) >= 6  # redis, worker + child, beat, api, flower

    launched.proc.send_signal(signal.SIGTERM)
    assert launched.proc.wait(60) == 0
    _, alive = psutil.wait_procs(everything, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert launched.said("[launcher] stopped")


def test_a_worker_killed_under_the_launcher_is_restarted(launched: Launched) -> None:
    worker = next(
        p for p in launched.processes() if any("worker1@" in part for part in p.cmdline())
    )
    os.killpg(worker.pid, signal.SIGKILL)

    wait_for(lambda: launched.said("restart 1/3"), 20, what="the launcher to restart it")
    with launched.client() as client:
        wait_for(
            lambda: any(w["ping"] for w in client.get("/api/system/workers").json()["workers"]),
            60,
            what="the restarted worker to answer",
        )
        task_id = submit(client, "system.noop")["task_id"]
        wait_state(client, task_id, "SUCCESS")
    assert launched.proc.poll() is None


def test_the_embedded_redis_wants_the_password_the_launcher_keeps_private(
    launched: Launched,
) -> None:
    password_file = launched.data_dir / "redis_password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    port = launched.redis_port

    # Refused without the password, on the wire and through a client; fine with it.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(200).startswith(b"-NOAUTH")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="wrong", socket_timeout=5).ping()
    assert redis.Redis(port=port, password=password, socket_timeout=5).ping()
    # Still on loopback only.
    listening = {
        c.laddr.ip
        for p in launched.processes()
        for c in p.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}
    # On no command line, in no output; the ready line shows where it is instead.
    assert not [p.cmdline() for p in launched.processes() if password in " ".join(p.cmdline())]
    assert not launched.said(password)
    assert launched.said(f"Redis    redis://:***@127.0.0.1:{port}/0   (password in {password_file}")

    # Everything the launcher started was given it: a task runs through Redis on a worker.
    with launched.client() as client:
        assert client.get("/health").json()["broker"] == "up"
        task_id = submit(client, "system.noop")["task_id"]
        assert wait_state(client, task_id, "SUCCESS")["executor"] == "celery"
    with httpx.Client(base_url=launched.flower, auth=("syncq", launched.token)) as flower:
        workers = wait_for(
            lambda: flower.get("/api/workers", params={"refresh": "true"}).json(),
            30,
            what="Flower to reach the workers through Redis",
        )
        assert any(name.startswith("worker1@") for name in workers)


def launcher_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "start_celery_services", ROOT / "scripts" / "start_celery_services.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_redis_password_is_made_once_and_private_from_the_start(tmp_path: Path) -> None:
    launcher = launcher_module()
    data_dir = tmp_path / "data"
    old_umask = os.umask(0)  # even with a umask that would let everyone read it
    try:
        first = launcher.ensure_redis_password(data_dir)
    finally:
        os.umask(old_umask)

    assert launcher.ensure_redis_password(data_dir) == first
    assert len(first) >= 40
    assert stat.S_IMODE((data_dir / "redis_password").stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_any_password_survives_the_redis_config_quoting(tmp_path: Path) -> None:
    """A password from REDIS_URL may hold anything; redis-server reads it back as sent."""
    launcher = launcher_module()
    password = "a b\"c\\d'é\x01#"
    server = RedisServer(tmp_path)
    server.args = [redis_server_binary(), "-", *server.args[1:]]
    config = f"requirepass {launcher.redis_config_string(password)}\n".encode()
    proc = subprocess.Popen(
        server.args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(config)
        proc.stdin.close()
        client = redis.Redis(port=server.port, password=password, socket_timeout=2)
        assert wait_for(client.ping, 10, what="redis-server with the quoted password")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, password=password[:-1], socket_timeout=2).ping()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
