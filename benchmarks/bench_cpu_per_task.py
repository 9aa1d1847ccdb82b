"""CPU per task, syncq against the plain pattern, one side at a time and each part alone.

Where bench_against_plain measures rates with everything running at once (on a 2-core
machine the API, the worker, Redis and the database then share the CPU, and which side
"wins" depends on how they split it), this one separates the parts:

  * **API**: with the worker stopped, wrk posts conversation messages at 1 and 10
    connections for ``--seconds``; the API process's CPU time (user + system) divided by
    the requests, and Redis's.
  * **worker, pure drain**: wrk fills the queue with the worker stopped, then the worker
    starts and drains it with nothing else running (every phase starts with both sides'
    queues empty); the worker's CPU time (its main
    process and its two pool processes) per task, the main process's alone, and the
    drain rate (tasks / time until the queues are empty).

Both sides run in the same process tree beside each other (plain's stack from
benchmarks/plain_stack.py), alternating, ``--rounds`` times.

    .venv/bin/python -m benchmarks.bench_cpu_per_task --db sqlite|postgresql [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import psutil

from benchmarks.bench_against_plain import wait_drained
from benchmarks.plain_stack import plain_stack, require_psycopg2
from benchmarks.stack import bench_stack, describe
from benchmarks.wrk import require_wrk, run_wrk
from tests.support import TOKEN, Api, Worker

# wait_drained waits for 1 s of empty queues; that second is not draining.
SETTLE_SECONDS = 1.0


def cpu_seconds(*pids: int) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def process_tree(pid: int) -> list[int]:
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


@dataclass
class Side:
    name: str
    api: Api
    worker: Worker
    redis_url: str


def api_phase(side: Side, redis_pid: int, connections: int, seconds: float, tag: str) -> None:
    api_pid = side.api.proc.pid if side.api.proc else 0
    before = cpu_seconds(api_pid), cpu_seconds(redis_pid)
    args = [TOKEN, "post", f"{side.name}-api-{tag}-{connections}", "50"]
    result = run_wrk(f"{side.api.base_url}/", connections, seconds, args)
    api_cpu = cpu_seconds(api_pid) - before[0]
    redis_cpu = cpu_seconds(redis_pid) - before[1]
    print(
        f"  {side.name:<6} API {connections:>3} conn: {result.rate:7.1f} submits/s, "
        f"p50 {result.p50_ms:6.2f} ms; API CPU {1e3 * api_cpu / result.requests:.3f} ms "
        f"a request, Redis {1e3 * redis_cpu / result.requests:.3f}",
        flush=True,
    )


def drain_phase(side: Side, redis_pid: int, seconds: float, tag: str) -> None:
    side.worker.stop()
    args = [TOKEN, "post", f"{side.name}-drain-{tag}", "50"]
    tasks = run_wrk(f"{side.api.base_url}/", 10, seconds, args).requests
    time.sleep(1)
    side.worker.start()
    main_pid = side.worker.proc.pid if side.worker.proc else 0
    while len(pids := process_tree(main_pid)) < 3:  # the main process and its two children
        time.sleep(0.02)
    began = time.monotonic()
    before = cpu_seconds(*pids), cpu_seconds(main_pid), cpu_seconds(redis_pid)
    wait_drained(side.redis_url, 600)
    took = time.monotonic() - began - SETTLE_SECONDS
    worker_cpu = cpu_seconds(*process_tree(main_pid)) - before[0]
    main_cpu = cpu_seconds(main_pid) - before[1]
    redis_cpu = cpu_seconds(redis_pid) - before[2]
    print(
        f"  {side.name:<6} drain of {tasks}: {tasks / took:6.1f} tasks/s; worker CPU "
        f"{1e3 * worker_cpu / tasks:.3f} ms a task (main process {1e3 * main_cpu / tasks:.3f}), "
        f"Redis {1e3 * redis_cpu / tasks:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=5, help="wrk time of each phase")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    require_wrk()
    if args.db == "postgresql":
        require_psycopg2()
    with bench_stack(args.db) as st, plain_stack(st) as pl:
        print(describe(st, "CPU per task, syncq against the plain pattern"), flush=True)
        redis_pid = st.redis.proc.pid if st.redis.proc else 0
        sides = [
            Side("syncq", st.api, st.worker, st.redis.url),
            Side("plain", pl.api, pl.worker, pl.redis_url),
        ]
        for n in range(args.rounds):
            print(f"round {n + 1}", flush=True)
            for side in sides:
                drain_phase(side, redis_pid, args.seconds, str(n))
            for side in sides:
                side.worker.stop()
                for connections in (1, 10):
                    api_phase(side, redis_pid, connections, args.seconds, str(n))
                side.worker.start()
                # What the API phases queued is drained before anything is measured again.
                wait_drained(side.redis_url, 600)


if __name__ == "__main__":
    main()
