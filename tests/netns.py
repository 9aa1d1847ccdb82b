"""Several hosts on one machine, for tests of what crosses a network.

Network namespaces made by the test itself (``ip netns``, veth pairs), with addresses only
inside them: a server namespace holding Redis and a PostgreSQL of its own, and worker
namespaces each linked to it by one veth pair, whose link the test can cut and heal. The
test process reaches the server through one more pair. Nothing here touches the
machine's own services, addresses or routes beyond the root end of that last pair.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import redis

from tests.support import Process, redis_server_binary, wait_for

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
REDIS_PORT = 6390
PG_PORT = 5439


def unavailable() -> str | None:
    """Why this machine cannot run the tests here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no ip (iproute2) on this machine"
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "no PostgreSQL server binaries (initdb) on this machine"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user to run a PostgreSQL server as"
    probe = f"sqprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", *args] if ns is None else ["ip", "netns", "exec", ns, "ip", *args]
    subprocess.run(command, check=True, capture_output=True)


@dataclass
class Link:
    """A veth pair between the server namespace and a worker namespace."""

    ns: str
    server_end: str
    server_address: str  # what the worker connects to
    worker_address: str

    def cut(self, server: str) -> None:
        """Packets stop both ways; open TCP connections stay open, as in a real partition."""
        _ip("link", "set", self.server_end, "down", ns=server)

    def heal(self, server: str) -> None:
        _ip("link", "set", self.server_end, "up", ns=server)


@dataclass
class Hosts:
    prefix: str
    subnet: str  # the first two octets, e.g. "10.213"
    server: str = ""
    links: dict[str, Link] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    root_end: str = ""

    @property
    def server_address(self) -> str:
        """The server as the test process (root namespace) reaches it."""
        return f"{self.subnet}.0.2"

    def add_server(self) -> None:
        self.server = self._namespace("srv")
        self.root_end = f"{self.prefix}r0"
        _ip("link", "add", self.root_end, "type", "veth", "peer", "name", f"{self.prefix}s0")
        _ip("link", "set", f"{self.prefix}s0", "netns", self.server)
        _ip("addr", "add", f"{self.subnet}.0.1/24", "dev", self.root_end)
        _ip("link", "set", self.root_end, "up")
        _ip("addr", "add", f"{self.server_address}/24", "dev", f"{self.prefix}s0", ns=self.server)
        _ip("link", "set", f"{self.prefix}s0", "up", ns=self.server)

    def add_worker_host(self, name: str, index: int) -> Link:
        ns = self._namespace(name)
        server_end, worker_end = f"{self.prefix}s{index}", f"{self.prefix}w{index}"
        _ip("link", "add", server_end, "type", "veth", "peer", "name", worker_end)
        _ip("link", "set", server_end, "netns", self.server)
        _ip("link", "set", worker_end, "netns", ns)
        link = Link(ns, server_end, f"{self.subnet}.{index}.1", f"{self.subnet}.{index}.2")
        _ip("addr", "add", f"{link.server_address}/24", "dev", server_end, ns=self.server)
        _ip("link", "set", server_end, "up", ns=self.server)
        _ip("addr", "add", f"{link.worker_address}/24", "dev", worker_end, ns=ns)
        _ip("link", "set", worker_end, "up", ns=ns)
        self.links[name] = link
        return link

    def _namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # a crashed run's
        _ip("netns", "add", ns)
        self.made.append(ns)
        _ip("link", "set", "lo", "up", ns=ns)
        return ns

    def remove(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.root_end:
            subprocess.run(["ip", "link", "del", self.root_end], capture_output=True)


@contextlib.contextmanager
def hosts(*workers: str) -> Iterator[Hosts]:
    """A server namespace and one namespace per worker name, removed afterwards."""
    pid = os.getpid()
    made = Hosts(prefix=f"sq{pid % 100000}", subnet=f"10.{200 + pid % 50}")
    try:
        made.add_server()
        for index, name in enumerate(workers, start=1):
            made.add_worker_host(name, index)
        yield made
    finally:
        made.remove()


class InNamespace(Process):
    """A process started inside a network namespace."""

    def __init__(self, ns: str, args: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(["ip", "netns", "exec", ns, *args], env, log)


class ServerRedis(InNamespace):
    def __init__(self, hosts: Hosts, logs: Path) -> None:
        args = [
            redis_server_binary(),
            "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        super().__init__(hosts.server, args, dict(os.environ), logs / "netns-redis.log")
        self.url = f"redis://{hosts.server_address}:{REDIS_PORT}/0"

    def start(self) -> None:
        super().start()
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)
        wait_for(lambda: client.ping(), 15, what=f"redis in the server namespace\n{self.tail()}")


class ServerPostgres(InNamespace):
    """A throwaway PostgreSQL cluster of the test's own, inside the server namespace (the
    machine's PostgreSQL listens on the root namespace's loopback, out of reach there)."""

    def __init__(self, hosts: Hosts, logs: Path) -> None:
        assert PG_BIN is not None
        self.dir = Path(tempfile.mkdtemp(prefix="syncq-netns-pg-"))
        owner = pwd.getpwnam("postgres")
        os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        data = self.dir / "data"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
             "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")  # only the namespaces reach it
        args = [
            "runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
            "-p", str(PG_PORT), "-k", str(self.dir), "-c", "listen_addresses=*",
            "-c", "fsync=off", "-c", "max_connections=200",
        ]  # fmt: skip
        super().__init__(hosts.server, args, dict(os.environ), logs / "netns-postgres.log")
        self.hosts = hosts

    def url(self, host: str, database: str = "syncq") -> str:
        return f"postgresql+asyncpg://postgres@{host}:{PG_PORT}/{database}"

    def start(self) -> None:
        super().start()
        address = self.hosts.server_address

        async def ready() -> bool:
            conn = await asyncpg.connect(
                host=address, port=PG_PORT, user="postgres", database="postgres", timeout=2
            )
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname='syncq'"):
                    await conn.execute("CREATE DATABASE syncq")
            finally:
                await conn.close()
            return True

        import asyncio

        def up() -> bool:
            try:
                return asyncio.run(ready())
            except (OSError, asyncpg.PostgresError):
                return False

        wait_for(up, 30, what=f"postgres in the server namespace\n{self.tail()}")

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)
        shutil.rmtree(self.dir, ignore_errors=True)
