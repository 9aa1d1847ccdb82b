"""A worker partitioned from Redis and the database mid-sync (issue 13), across network
namespaces the test makes itself (tests/netns.py): Redis and PostgreSQL in one namespace,
two workers in two others, the API in the test's own namespace.

The first worker's link is cut while it syncs a file; once its lease lapses the recovery
sweep hands the run to the second worker, which resumes from the last committed batch;
then the link heals. The dataset must end exact (every row once, every rejected row once,
the file's counters one sync's) and the healed worker's late writes refused: it ends its
run as lost, with nothing committed after the cut.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import netns
from tests.conftest import FAST_TIMINGS
from tests.helpers import wait_state
from tests.support import QUEUES, TOKEN, Api, run_migrations, wait_for

pytestmark = pytest.mark.slow

ROWS = 60_000
BAD_EVERY = 100


def _csv() -> bytes:
    lines = ["sku,name,qty"]
    for i in range(ROWS):
        sku = "" if i % BAD_EVERY == 0 else f"P{i:07d}"
        lines.append(f"{sku},part {i},{i % 13}")
    return ("\n".join(lines) + "\n").encode()


class NamespacedWorker(netns.InNamespace):
    def __init__(self, ns: str, name: str, env: dict[str, str], logs: Path) -> None:
        self.node = f"{name}@{ns}"
        args = [
            sys.executable, "-m", "celery", "-A", "backend.celery_app", "worker",
            "-Q", QUEUES, "-c", "1", "-n", self.node,
            "--without-mingle", "--without-gossip", "-l", "info",
        ]  # fmt: skip
        super().__init__(ns, args, env, logs / f"netns-worker-{name}.log")


@pytest.fixture
def network(tmp_path: Path) -> Iterator[dict[str, Any]]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    logs = tmp_path / "logs"
    with netns.hosts("w1", "w2") as hosts:
        redis_server = netns.ServerRedis(hosts, logs)
        postgres = netns.ServerPostgres(hosts, logs)
        redis_server.start()
        postgres.start()
        try:
            yield {"hosts": hosts, "redis": redis_server, "postgres": postgres, "logs": logs}
        finally:
            postgres.stop()
            redis_server.stop()


def _env(
    base: dict[str, str], host: str, network: dict[str, Any], data_dir: Path
) -> dict[str, str]:
    return base | {
        "REDIS_URL": f"redis://{host}:{netns.REDIS_PORT}/0",
        "DATABASE_URL": network["postgres"].url(host),
        "DATA_DIR": str(data_dir),
    }


async def _runner(url: str, task_id: str) -> str | None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        runner: str | None = await conn.fetchval(
            "SELECT runner FROM task_runs WHERE id = $1", task_id
        )
        return runner
    finally:
        await conn.close()


async def _dataset_state(url: str, dataset: str, file_id: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        records = await conn.fetchval("SELECT count(*) FROM records WHERE dataset = $1", dataset)
        errors = await conn.fetchval("SELECT count(*) FROM sync_errors WHERE file_id = $1", file_id)
        f = await conn.fetchrow(
            "SELECT rows_read, rows_inserted, rows_rejected FROM sync_files WHERE id = $1", file_id
        )
    finally:
        await conn.close()
    return {"records": records, "errors": errors, **dict(f)}


def test_a_partitioned_worker_is_taken_over_and_its_late_writes_are_refused(
    network: dict[str, Any], tmp_path: Path
) -> None:
    hosts: netns.Hosts = network["hosts"]
    logs: Path = network["logs"]
    data_dir = tmp_path / "data"
    base = (
        {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REDIS_", "CELERY_", "DATABASE_", "API_"))
        }
        | FAST_TIMINGS
        | {
            "API_TOKENS": TOKEN,
            "PYTHONUNBUFFERED": "1",
            "SYNC_BATCH_SIZE": "250",
            "LEASE_SECONDS": "4",
            "HEARTBEAT_SECONDS": "0.5",
        }
    )
    api_env = _env(base, hosts.server_address, network, data_dir)
    run_migrations(api_env)
    api = Api(api_env, logs, name="netns-api")
    api.start()
    w1_link, w2_link = hosts.links["w1"], hosts.links["w2"]
    w1 = NamespacedWorker(
        w1_link.ns, "w1", _env(base, w1_link.server_address, network, data_dir), logs
    )
    w2 = NamespacedWorker(
        w2_link.ns, "w2", _env(base, w2_link.server_address, network, data_dir), logs
    )
    try:
        with api.client() as client:
            w1.start()
            wait_for(
                lambda: client.get("/health").json()["workers"] >= 1, 30, what=f"w1\n{w1.tail()}"
            )
            dataset = f"part-{uuid.uuid4().hex[:8]}"
            registered = client.post(
                "/api/data-sync/files",
                files={"file": ("parts.csv", _csv(), "text/csv")},
                data={"dataset": dataset, "key_columns": "sku"},
            )
            assert registered.status_code == 201, registered.text
            file_id = registered.json()["file_id"]
            task_id = client.post(
                "/api/data-sync/sync-single-file", json={"file_id": file_id}
            ).json()["task_id"]

            def progress() -> int:
                body = client.get(f"/api/tasks/{task_id}").json()
                assert body["state"] not in ("SUCCESS", "FAILURE"), body
                return int((body.get("progress") or {}).get("current") or 0)

            wait_for(lambda: progress() >= ROWS // 10, 60, interval=0.02, what="w1 a tenth in")
            w1_link.cut(hosts.server)
            cut_at = time.monotonic()
            w2.start()

            db_url = network["postgres"].url(hosts.server_address)

            def taken_over() -> bool:
                return str(asyncio.run(_runner(db_url, task_id))).startswith(w2.node)

            wait_for(taken_over, 60, interval=0.1, what=f"w2 taking over\n{w2.tail()}")
            lease_lapsed_after = time.monotonic() - cut_at
            w1_link.heal(hosts.server)

            done = wait_state(client, task_id, "SUCCESS", timeout=120)
            good = ROWS - ROWS // BAD_EVERY
            assert done["result"]["inserted"] + done["result"]["updated"] == good, done["result"]
            exact = {
                "records": good,
                "errors": ROWS // BAD_EVERY,
                "rows_read": ROWS,
                "rows_inserted": good,
                "rows_rejected": ROWS // BAD_EVERY,
            }
            assert asyncio.run(_dataset_state(db_url, dataset, file_id)) == exact

            # The healed worker learns it lost the run, and what it held back is refused.
            wait_for(
                lambda: "lease lost" in w1.log_path.read_text(errors="replace"),
                60,
                what=f"w1 noticing it lost the run\n{w1.tail()}",
            )
            time.sleep(2)
            assert asyncio.run(_dataset_state(db_url, dataset, file_id)) == exact
            assert lease_lapsed_after >= 4  # the run was not taken while its lease held
    finally:
        w1.stop()
        w2.stop()
        api.stop()


LOCK_HOLDER = """
import asyncio, sys
from sqlalchemy import text
from backend.db.engine import make_engine

async def main() -> None:
    engine = make_engine(sys.argv[1])
    async with engine.begin() as conn:
        await conn.execute(text("SELECT v FROM held WHERE id = 1 FOR UPDATE"))
        print("locked", flush=True)
        await asyncio.sleep(300)

asyncio.run(main())
"""


def test_a_session_cut_off_mid_transaction_gives_its_row_locks_back_within_seconds(
    network: dict[str, Any], tmp_path: Path
) -> None:
    """A worker partitioned inside a transaction keeps its row locks until PostgreSQL
    notices it is gone; without our keepalive settings that is the OS default of two
    hours, and the recovery sweep re-dispatching its task waited on them (a CI run saw
    it stuck for a minute)."""
    hosts: netns.Hosts = network["hosts"]
    postgres: netns.ServerPostgres = network["postgres"]
    admin = postgres.url(hosts.server_address).replace("postgresql+asyncpg", "postgresql")

    async def run(sql: str) -> float:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute("SET lock_timeout = '40s'")
            started = time.monotonic()
            await conn.execute(sql)
            return time.monotonic() - started
        finally:
            await conn.close()

    asyncio.run(
        run("CREATE TABLE held (id int PRIMARY KEY, v int); INSERT INTO held VALUES (1, 0)")
    )
    link = hosts.links["w1"]
    holder = netns.InNamespace(
        link.ns,
        [sys.executable, "-c", LOCK_HOLDER, postgres.url(link.server_address)],
        dict(os.environ),
        network["logs"] / "netns-lock-holder.log",
    )
    holder.start()
    try:
        wait_for(lambda: "locked" in holder.tail(), 30, what=f"the lock\n{holder.tail()}")
        link.cut(hosts.server)
        waited = asyncio.run(run("UPDATE held SET v = v + 1 WHERE id = 1"))
    finally:
        link.heal(hosts.server)
        holder.kill()
    assert waited < 30, f"the row stayed locked {waited:.0f} s after the cut"
