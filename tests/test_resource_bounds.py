"""Resource bounds: what is too big is refused with a clear answer, and refusing it costs
bounded memory.

- An upload past MAX_UPLOAD_BYTES is 413 with a sentence saying the limit, whether it
  declares its length (refused before a byte is read) or streams it (refused as soon as
  it passes the limit), and leaves nothing behind on disk.
- A CSV whose header has a million columns, and one whose single line is 100 MB, end
  FAILURE with a readable reason; a 100 MB row inside a good file is one rejected row,
  listed with its row number. The worker's and the API's memory (RSS of each process
  tree, sampled throughout) grows by far less than the file's size.
- With Redis unreachable, a flood of submissions fills the local executor's queue
  (LOCAL_QUEUE_SIZE) and the rest are 429 with Retry-After; what was accepted finishes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import wait_final
from tests.support import Api, RedisServer, Worker, free_port, serving_worker, wait_for

MB = 1 << 20
RSS_GROWTH_LIMIT = 500 * MB  # generous: the files are 100 MB; unbounded reading costs GBs
SMALL_UPLOAD_LIMIT = 1000  # MAX_UPLOAD_BYTES of the small_uploads_api fixture


def new_dataset() -> str:
    return f"rb-{uuid.uuid4().hex[:10]}"


# -- uploads past the limit -----------------------------------------------------------------


def _upload_files(data_dir: Path) -> set[str]:
    uploads = data_dir.resolve() / "uploads"
    return {p.name for p in uploads.iterdir()} if uploads.is_dir() else set()


def test_an_upload_past_the_limit_is_413_saying_the_limit_and_leaves_nothing_behind(
    api_env_small_uploads: httpx.Client, stack_env: dict[str, str]
) -> None:
    before = _upload_files(Path(stack_env["DATA_DIR"]))
    declared = api_env_small_uploads.post(
        "/api/data-sync/files",
        files={"file": ("big.csv", b"id\n" + b"1\n" * 50_000, "text/csv")},
        data={"dataset": new_dataset(), "key_columns": "id"},
    )

    def stream() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it comes
        yield b'--b\r\nContent-Disposition: form-data; name="dataset"\r\n\r\nstreamed\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.csv"\r\n\r\n'
        for _ in range(40):
            yield b"1\n" * 50_000
        yield b"\r\n--b--\r\n"

    streamed = api_env_small_uploads.post(
        "/api/data-sync/files",
        content=stream(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )

    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json() == {"detail": f"the file is larger than {SMALL_UPLOAD_LIMIT} bytes"}
    assert _upload_files(Path(stack_env["DATA_DIR"])) == before


def _read_response(sock: socket.socket) -> str:
    """One whole HTTP/1.1 response (head and Content-Length bytes of body) off a socket."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    while length and len(body) < int(length.group(1)) and (chunk := sock.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_declared_oversized_upload_is_refused_before_its_body_is_read(
    small_uploads_api: Api, api_env_small_uploads: httpx.Client
) -> None:
    """The request says a gigabyte is coming and sends none of it: the 413 comes at once
    (were the body read, or spooled to disk, first, this would wait for it)."""
    host, port = small_uploads_api.base_url.removeprefix("http://").split(":")
    head = (
        f"POST /api/data-sync/files HTTP/1.1\r\nHost: {host}\r\nContent-Length: {10**9}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Authorization: {api_env_small_uploads.headers['Authorization']}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = _read_response(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert f"larger than {SMALL_UPLOAD_LIMIT} bytes" in answer


# -- absurd files -----------------------------------------------------------------------------


class RssSampler:
    """Samples the memory of process trees (a root and all its children) in a thread, every
    50 ms, from ``with`` to its end: the baseline and the peak of each.

    A process's memory is its PSS: private pages in full, shared ones divided among the
    processes that map them. Summed RSS counted every shared page once per process of the
    tree (Python, its libraries, the XLSX reader's interpreter beside the worker's): the
    hostile-workbook tests measured +103 MB against their 100 MB bound in one CI run and
    passed in the run before, on the same code.

    ``apart``: processes whose command line holds it count under ``"<root> apart"``, not in
    their root's tree. The XLSX reader has a memory limit of its own (RLIMIT_AS); how far
    it gets towards it in a parse cut off after 3 s depends on the machine's speed (+108 MB
    for the worker's tree on a fast day, under 100 on a slow one)."""

    def __init__(self, roots: dict[str, int], apart: str | None = None) -> None:
        self.apart = apart
        self.roots = {name: psutil.Process(pid) for name, pid in roots.items()}
        self.baseline: dict[str, int] = {}
        for name, p in self.roots.items():
            self.baseline[name], self.baseline[f"{name} apart"] = self._rss(p)
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, root: psutil.Process) -> tuple[int, int]:
        """(the tree's memory, that of its processes set apart)."""
        total = apart = 0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                set_apart = self.apart is not None and self.apart in " ".join(p.cmdline())
                pss = p.memory_full_info().pss
                if set_apart:
                    apart += pss
                else:
                    total += pss
        return total, apart

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for name, p in self.roots.items():
                tree, apart = self._rss(p)
                self.peak[name] = max(self.peak[name], tree)
                self.peak[f"{name} apart"] = max(self.peak[f"{name} apart"], apart)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth(self) -> dict[str, int]:
        return {name: self.peak[name] - self.baseline[name] for name in self.roots}

    def report(self) -> str:
        names = [*self.roots, *(f"{n} apart" for n in self.roots if self.apart is not None)]
        return ", ".join(
            f"{name} {self.baseline[name] / MB:.0f} → peak {self.peak[name] / MB:.0f} MB "
            f"(+{(self.peak[name] - self.baseline[name]) / MB:.0f})"
            for name in names
        )


def _write(path: Path, *parts: bytes, repeat: tuple[bytes, int] | None = None) -> Path:
    """Write a file from parts, the middle one ``repeat``ed, without building it whole."""
    with path.open("wb") as f:
        f.write(parts[0])
        if repeat:
            chunk, times = repeat
            for _ in range(times):
                f.write(chunk)
        for part in parts[1:]:
            f.write(part)
    return path


@pytest.fixture(scope="module")
def absurd_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("absurd")
    columns = ",".join(f"c{i}" for i in range(1_000_000)).encode()
    return {
        # the header names a million columns (7.9 MB on one line)
        "million_columns": _write(d / "wide.csv", b"id," + columns + b"\n1,2\n"),
        # a good header, then a row of a million fields
        "million_fields_row": _write(
            d / "fields.csv", b"id,v\n1,", b"\n2,ok\n", repeat=(b"x,", 10**6)
        ),
        # the whole file is one 100 MB line: no header to speak of
        "one_100mb_line": _write(d / "line.csv", b"", repeat=(b"y" * MB, 100)),
        # a good header, a 100 MB row, a good row
        "100mb_row": _write(d / "row.csv", b"id,v\n1,", b"\n2,ok\n", repeat=(b"x" * MB, 100)),
    }


EXPECTED: dict[str, tuple[str, str]] = {
    "million_columns": ("FAILURE", "about 1,000,001 columns"),
    "million_fields_row": ("SUCCESS", "1000002 fields, but the header names 2"),
    "one_100mb_line": ("FAILURE", "the header row is 104,857,600 characters long"),
    "100mb_row": ("SUCCESS", "the row is 104,857,603 characters long"),
}


@pytest.fixture(scope="module")
def sync_worker(
    stack_env: dict[str, str], workdir: Path, redis_server: RedisServer
) -> Iterator[Worker]:
    """One worker (one pool process) for the module's syncs."""
    if not redis_server.alive:
        redis_server.start()
    worker = serving_worker(
        f"rb{uuid.uuid4().hex[:6]}", stack_env, workdir / "logs", redis_server, 1
    )
    yield worker
    worker.stop()


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_an_absurd_csv_fails_or_is_rejected_readably_in_bounded_memory(
    client: httpx.Client,
    sync_worker: Worker,
    api: Api,
    absurd_files: dict[str, Path],
    kind: str,
    record_property: Any,
) -> None:
    worker = sync_worker
    assert worker.alive and worker.proc is not None and api.proc is not None, worker.tail()
    dataset = new_dataset()
    path = absurd_files[kind]
    with RssSampler({"worker": worker.proc.pid, "api": api.proc.pid}) as rss:
        with path.open("rb") as upload:
            registered = client.post(
                "/api/data-sync/files",
                files={"file": (path.name, upload, "text/csv")},
                data={"dataset": dataset, "key_columns": "id"},
                timeout=300,
            )
        assert registered.status_code == 201, registered.text
        synced = client.post(
            "/api/data-sync/sync-single-file", json={"file_id": registered.json()["file_id"]}
        )
        assert synced.status_code == 202, synced.text
        done = wait_final(client, synced.json()["task_id"], timeout=300)
    record_property("rss", rss.report())
    print(f"\n{kind} ({path.stat().st_size / MB:.1f} MB): {rss.report()}")

    state, reason = EXPECTED[kind]
    assert done["state"] == state, done
    if state == "FAILURE":
        assert done["error"]["type"] == "BadFile", done["error"]
        assert reason in done["error"]["message"], done["error"]
        summary = client.get(f"/api/data-sync/datasets/{dataset}").json()
        assert summary["record_count"] == 0  # a bad file changes nothing
    else:
        result = done["result"]
        assert (result["inserted"], result["rejected"]) == (1, 1), result
        [rejected] = result["rejected_rows"]
        assert rejected["row"] == 2 and reason in rejected["reason"], rejected
    for name, grew in rss.growth().items():
        assert grew < RSS_GROWTH_LIMIT, f"{name} grew by {grew / MB:.0f} MB: {rss.report()}"


def test_a_header_wider_than_the_sniffed_sample_is_read_whole(
    client: httpx.Client, sync_worker: Worker
) -> None:
    """2000 columns (the most allowed) of 38-character names: 78 KB, more than the 64 KiB
    sample the delimiter is sniffed from, which the header used to be cut from."""
    columns = [f"a_rather_long_column_name_number_{i:05d}" for i in range(2000)]
    content = (",".join(columns) + "\n" + ",".join(map(str, range(2000))) + "\n").encode()
    registered = client.post(
        "/api/data-sync/files",
        files={"file": ("wide.csv", content, "text/csv")},
        data={"dataset": new_dataset(), "key_columns": columns[-1]},
    )
    assert registered.status_code == 201, registered.text
    synced = client.post(
        "/api/data-sync/sync-single-file", json={"file_id": registered.json()["file_id"]}
    )
    done = wait_final(client, synced.json()["task_id"], timeout=60)
    assert done["state"] == "SUCCESS", done
    assert (done["result"]["inserted"], done["result"]["rejected"]) == (1, 0), done["result"]


# -- Redis down, local executor full ------------------------------------------------------------

LOCAL_QUEUE_SIZE = 3


@pytest.fixture(scope="module")
def redisless_api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    """An API whose Redis is a port nobody listens on, with a small local executor."""
    env = stack_env | {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LOCAL_QUEUE_SIZE": str(LOCAL_QUEUE_SIZE),
        "LOCAL_CONCURRENCY": str(LOCAL_QUEUE_SIZE),
        "RECOVERY_INTERVAL_SECONDS": "3600",  # leave other tests' tasks to their own sweeps
    }
    server = Api(env, workdir / "logs", name="api-redisless")
    server.start()
    yield server
    server.stop()


def test_a_flood_with_redis_down_is_429_with_retry_after_once_the_local_queue_is_full(
    redisless_api: Api,
) -> None:
    with redisless_api.client() as c:
        assert c.get("/health").json()["broker"] == "down"
        wait_for(
            lambda: c.get("/api/system/queues").json()["local_executor"]["held"] == 0,
            60,
            what="an idle local executor",
        )
        body = {"name": "system.sleep", "args": {"seconds": 3, "steps": 3}}
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: c.post("/api/tasks", json=body), range(24)))

        accepted = [r.json() for r in answers if r.status_code == 202]
        refused = [r for r in answers if r.status_code == 429]
        assert len(accepted) + len(refused) == len(answers), [r.text for r in answers]
        assert 1 <= len(accepted) <= LOCAL_QUEUE_SIZE, [r.text for r in answers]
        for r in refused:
            assert int(r.headers["Retry-After"]) > 0
            assert "full" in r.json()["detail"]
        for task in accepted:
            assert task["executor"] == "local"
            done = wait_final(c, task["task_id"], timeout=60)
            assert (done["state"], done["executor"]) == ("SUCCESS", "local"), done

        # The refusal was about that moment: with the queue drained, work is accepted again.
        again = c.post("/api/tasks", json={"name": "system.noop"})
        assert again.status_code == 202, again.text
        assert wait_final(c, again.json()["task_id"])["state"] == "SUCCESS"


def test_an_upload_refused_for_a_full_local_queue_leaves_no_stored_copy(
    redisless_api: Api, stack_env: dict[str, str]
) -> None:
    """With Redis down and the local queue full, an upload is 429 and its stored copy goes:
    no registration will ever read it."""
    uploads = Path(stack_env["DATA_DIR"]).resolve() / "uploads"
    with redisless_api.client() as c:
        wait_for(
            lambda: c.get("/api/system/queues").json()["local_executor"]["held"] == 0,
            60,
            what="an idle local executor",
        )
        body = {"name": "system.sleep", "args": {"seconds": 3, "steps": 3}}
        held = [c.post("/api/tasks", json=body) for _ in range(LOCAL_QUEUE_SIZE)]
        assert all(r.status_code == 202 for r in held), [r.text for r in held]
        before = set(uploads.iterdir()) if uploads.is_dir() else set()

        refused = c.post(
            "/api/data-sync/files",
            files={
                "file": (
                    "items.csv",
                    b"sku,qty\nA,1\n" + uuid.uuid4().bytes.hex().encode(),
                    "text/csv",
                )
            },
            data={"dataset": new_dataset(), "key_columns": "sku"},
        )

        assert refused.status_code == 429, refused.text
        assert set(uploads.iterdir()) == before
        for r in held:
            wait_final(c, r.json()["task_id"], timeout=60)
