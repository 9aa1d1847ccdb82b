"""Data sync through the API: register, sync into datasets, read back; every format and
encoding, bad files, resumption after kill -9, cancel, priorities, and Redis down."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import StartWorker
from tests.helpers import status, wait_final, wait_state
from tests.support import RedisServer, wait_for


def new_dataset() -> str:
    return f"ds-{uuid.uuid4().hex[:10]}"


def csv_bytes(rows: int, *, start: int = 0, version: str = "v1", sep: str = ",") -> bytes:
    lines = [sep.join(["order_id", "sku", "qty", "note"])]
    lines += [
        sep.join([str(i), f"SKU{i % 97}", str(i % 13), version]) for i in range(start, start + rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def mostly_the_same(rows: int, *, every: int) -> bytes:
    """``csv_bytes(rows)`` with every ``every``-th row's note changed: a sync of it over
    the first finds most batches unchanged, so it reads each next batch ahead while the
    database is asked which rows of this one differ."""
    lines = csv_bytes(rows).decode().splitlines()
    for i in range(1, len(lines), every):
        lines[i] = lines[i].rsplit(",", 1)[0] + ",v2"
    return ("\n".join(lines) + "\n").encode()


def first_sync(client: httpx.Client, start_worker: StartWorker, dataset: str, rows: int) -> None:
    """Fill ``dataset`` with ``csv_bytes(rows)`` on a worker of its own, in default batches
    (quick), and stop that worker."""
    filler = start_worker()
    first = register(client, csv_bytes(rows), dataset)
    wait_state(client, sync(client, first["file_id"])["task_id"], "SUCCESS", timeout=120)
    filler.stop()


def wait_under_way(client: httpx.Client, task_id: str, rows: int) -> None:
    """Until the task's progress says ``rows`` rows are committed."""
    wait_for(
        lambda: (status(client, task_id).get("progress") or {}).get("current", 0) >= rows,
        60,
        what=f"{rows} rows of the sync committed",
    )


def register(
    client: httpx.Client,
    content: bytes,
    dataset: str,
    keys: str = "order_id",
    name: str = "orders.csv",
) -> dict[str, Any]:
    response = client.post(
        "/api/data-sync/files",
        files={"file": (name, io.BytesIO(content), "application/octet-stream")},
        data={"dataset": dataset, "key_columns": keys},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def sync(client: httpx.Client, file_id: int, priority: int = 5) -> dict[str, Any]:
    response = client.post(
        "/api/data-sync/sync-single-file", json={"file_id": file_id, "priority": priority}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["celery_task_id"] == body["task_id"] and body["status"] == "PENDING"
    return body


def dataset_info(client: httpx.Client, dataset: str) -> dict[str, Any]:
    response = client.get(f"/api/data-sync/datasets/{dataset}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_csv_syncs_into_its_dataset_with_correct_counts_and_resyncing_changes_nothing(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset = new_dataset()
    f = register(client, csv_bytes(100_000), dataset)
    assert f["duplicate"] is False

    first = wait_state(client, sync(client, f["file_id"])["task_id"], "SUCCESS", timeout=120)
    assert first["queue"] == "data_sync"
    assert first["result"] | {"rejected_rows": []} == {
        "file_id": f["file_id"], "dataset": dataset, "rows_read": 100_000,
        "inserted": 100_000, "updated": 0, "unchanged": 0, "rejected": 0, "rejected_rows": [],
    }  # fmt: skip
    assert first["progress"]["current"] == 100_000

    again = wait_state(client, sync(client, f["file_id"])["task_id"], "SUCCESS", timeout=120)
    assert (again["result"]["inserted"], again["result"]["updated"]) == (0, 0)
    assert again["result"]["unchanged"] == 100_000

    info = dataset_info(client, dataset)
    assert info["record_count"] == 100_000
    assert info["key_columns"] == ["order_id"]
    assert info["files"][0]["rows"]["read"] == 100_000
    assert info["files"][0]["last_sync_state"] == "SUCCESS"


def test_a_newer_file_updates_the_records_it_shares_keys_with(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset = new_dataset()
    old = register(client, csv_bytes(100, version="v1"), dataset)
    wait_state(client, sync(client, old["file_id"])["task_id"], "SUCCESS")
    new = register(client, csv_bytes(100, start=50, version="v2"), dataset)

    result = wait_state(client, sync(client, new["file_id"])["task_id"], "SUCCESS")["result"]

    assert (result["inserted"], result["updated"], result["unchanged"]) == (50, 50, 0)
    assert dataset_info(client, dataset)["record_count"] == 150
    page = client.get(f"/api/data-sync/datasets/{dataset}/records", params={"limit": 1000}).json()[
        "records"
    ]
    notes = {json.loads(r["key"])[0]: r["data"]["note"] for r in page}
    assert notes["10"] == "v1" and notes["60"] == "v2" and notes["149"] == "v2"


def test_the_same_bytes_registered_twice_give_the_first_file(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset, content = new_dataset(), csv_bytes(10, version=uuid.uuid4().hex)
    first = register(client, content, dataset)
    second = register(client, content, dataset, name="copy.csv")
    assert second == {**second, "file_id": first["file_id"], "duplicate": True}
    listed = client.get("/api/data-sync/files").json()
    assert [f["file_id"] for f in listed].count(first["file_id"]) == 1


def gbk_csv() -> bytes:
    return "订单号,商品,数量\n1001,苹果,3\n1002,香蕉,5\n".encode("gb18030")


def xlsx_bytes() -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["order_id", "item", "qty"])
    ws.append([1, "apple", 3])
    ws.append([2, "pear", None])
    ws.append([None, "no key", 1])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


FORMATS = [
    ("plain.csv", b"order_id,item\n1,apple\n2,pear\n", "order_id", 2, {"item": "pear"}),
    ("bom.csv", b"\xef\xbb\xbforder_id,item\n1,apple\n2,pear\n", "order_id", 2, {"item": "pear"}),
    ("semi.csv", b"order_id;item;price\n1;apple;1,5\n2;pear;2,0\n", "order_id", 2,
     {"price": "2,0"}),
    ("tabs.tsv", b"order_id\titem\n1\tapple\n2\tpear\n", "order_id", 2, {"item": "pear"}),
    ("gbk.csv", gbk_csv(), "订单号", 2, {"商品": "香蕉"}),
    ("rows.jsonl", b'{"order_id": 1, "item": "apple"}\n{"order_id": 2, "item": "pear"}\n',
     "order_id", 2, {"item": "pear"}),
    ("sheet.xlsx", xlsx_bytes(), "order_id", 2, {"item": "pear"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "keys", "count", "last"), FORMATS)
def test_each_format_and_encoding_syncs(
    client: httpx.Client,
    start_worker: StartWorker,
    name: str,
    content: bytes,
    keys: str,
    count: int,
    last: dict[str, Any],
) -> None:
    start_worker()
    dataset = new_dataset()
    f = register(client, content, dataset, keys=keys, name=name)

    done = wait_final(client, sync(client, f["file_id"])["task_id"])

    assert done["state"] == "SUCCESS", done["error"]
    assert done["result"]["inserted"] == count
    records = client.get(f"/api/data-sync/datasets/{dataset}/records").json()["records"]
    assert records[-1]["data"].items() >= last.items()


def truncated_xlsx() -> bytes:
    return xlsx_bytes()[:-200]


BAD_FILES = [
    ("junk.csv", bytes(range(256)) * 40, "binary data"),
    ("broken.xlsx", truncated_xlsx(), "not a readable XLSX"),
    ("noheader.csv", b"1,apple\n2,pear\n", "no key column 'order_id'"),
    ("latin1.csv", b"order_id,item\n1,caf\xe9\n2,\xff\xfe\xfd\x80\x80\x80\xff\n", "undecodable"),
    ("notjson.jsonl", b"order_id,item\n2,pear\n", "not JSON"),
    ("empty.csv", b"", "empty"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "reason"), BAD_FILES)
def test_a_bad_file_fails_with_a_readable_reason_and_leaves_the_dataset_unchanged(
    client: httpx.Client, start_worker: StartWorker, name: str, content: bytes, reason: str
) -> None:
    start_worker()
    dataset = new_dataset()
    good = register(client, b"order_id,item\n1,apple\n", dataset)
    wait_state(client, sync(client, good["file_id"])["task_id"], "SUCCESS")
    bad = register(client, content, dataset, name=name)

    done = wait_final(client, sync(client, bad["file_id"])["task_id"])

    assert done["state"] == "FAILURE"
    assert done["error"]["type"] == "BadFile"
    assert reason in done["error"]["message"]
    info = dataset_info(client, dataset)
    assert info["record_count"] == 1
    assert {f["file_id"]: f["last_sync_state"] for f in info["files"]}[bad["file_id"]] == "FAILURE"


def test_rows_with_missing_keys_are_rejected_with_their_row_numbers(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset = new_dataset()
    content = b"order_id,item\n1,apple\n,no key\n3,pear\n  ,blank key\n5,x,extra\n6,fig\n"
    f = register(client, content, dataset)

    result = wait_state(client, sync(client, f["file_id"])["task_id"], "SUCCESS")["result"]

    assert (result["rows_read"], result["inserted"], result["rejected"]) == (6, 3, 3)
    assert result["rejected_rows"] == [
        {"row": 3, "reason": "missing key column value: order_id"},
        {"row": 5, "reason": "missing key column value: order_id"},
        {"row": 6, "reason": "3 fields, but the header names 2"},
    ]
    assert dataset_info(client, dataset)["record_count"] == 3


def test_unknown_ids_and_datasets_are_404_and_bad_requests_422(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    assert (
        client.post(
            "/api/data-sync/sync-single-file", json={"file_id": 987654, "priority": 5}
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/data-sync/sync-batch", json={"file_ids": [987654], "priority": 5}
        ).status_code
        == 404
    )
    assert client.get(f"/api/data-sync/datasets/{new_dataset()}").status_code == 404
    for body in ({"file_id": 1, "priority": 10}, {"file_id": "one"}, {"file_id": 0}, {}):
        assert client.post("/api/data-sync/sync-single-file", json=body).status_code == 422
    assert client.post("/api/data-sync/sync-batch", json={"file_ids": []}).status_code == 422
    assert client.get("/api/data-sync/datasets/..%2Fetc").status_code in (404, 422)
    assert client.get("/api/data-sync/task-status/nope").status_code == 404


def test_uploads_are_stored_under_names_the_client_does_not_choose(
    client: httpx.Client, stack_env: dict[str, str], start_worker: StartWorker
) -> None:
    start_worker()
    from pathlib import Path

    dataset = new_dataset()
    f = register(client, b"order_id\n1\n", dataset, name="../../../etc/evil.csv")
    listed = {x["file_id"]: x for x in client.get("/api/data-sync/files").json()}[f["file_id"]]
    assert listed["original_name"] == "evil.csv"
    uploads = Path(stack_env["DATA_DIR"]).resolve() / "uploads"
    assert not (uploads.parent.parent / "etc" / "evil.csv").exists()
    assert any(p.suffix == ".csv" for p in uploads.iterdir())


def test_an_upload_over_the_limit_is_413(api_env_small_uploads: httpx.Client) -> None:
    response = api_env_small_uploads.post(
        "/api/data-sync/files",
        files={"file": ("big.csv", io.BytesIO(b"x" * 5000), "text/csv")},
        data={"dataset": "big", "key_columns": "x"},
    )
    assert response.status_code == 413


def test_registering_for_an_existing_dataset_with_other_keys_is_422(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset = new_dataset()
    register(client, b"a,b\n1,2\n", dataset, keys="a")
    response = client.post(
        "/api/data-sync/files",
        files={"file": ("other.csv", io.BytesIO(b"a,b\n3,4\n"), "text/csv")},
        data={"dataset": dataset, "key_columns": "b"},
    )
    assert response.status_code == 422
    assert "is keyed by" in response.json()["detail"]


@pytest.mark.slow
def test_a_sync_killed_mid_way_resumes_from_its_checkpoint_exactly_once(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    doomed = start_worker(env={"SYNC_BATCH_SIZE": "500"})
    dataset = new_dataset()
    f = register(client, csv_bytes(30_000), dataset)
    task_id = sync(client, f["file_id"])["task_id"]
    wait_under_way(client, task_id, rows=5_000)
    doomed.kill()
    committed = status(client, task_id)["progress"]["current"]

    start_worker(env={"SYNC_BATCH_SIZE": "500"})
    done = wait_state(client, task_id, "SUCCESS", timeout=120)

    assert done["attempts"] == 2
    assert done["result"]["rows_read"] == 30_000
    assert done["result"]["inserted"] == 30_000  # counts carried over, nothing counted twice
    assert dataset_info(client, dataset)["record_count"] == 30_000
    assert committed < 30_000


@pytest.mark.slow
def test_a_cancelled_sync_keeps_its_committed_batches_and_nothing_half_written(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker(env={"SYNC_BATCH_SIZE": "500"})
    dataset = new_dataset()
    f = register(client, csv_bytes(40_000), dataset)
    task_id = sync(client, f["file_id"])["task_id"]
    wait_under_way(client, task_id, rows=2_000)

    assert client.delete(f"/api/data-sync/cancel-task/{task_id}").json()["state"] == "REVOKED"
    wait_for(
        lambda: dataset_info(client, dataset)["files"][0]["last_sync_state"] == "REVOKED",
        20,
        what="the sync to stop",
    )

    count = dataset_info(client, dataset)["record_count"]
    assert 0 < count < 40_000
    assert count % 500 == 0  # whole batches only
    assert status(client, task_id)["state"] == "REVOKED"


@pytest.mark.slow
def test_a_resync_killed_while_reading_ahead_resumes_and_counts_each_row_once(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    dataset = new_dataset()
    first_sync(client, start_worker, dataset, rows=60_000)
    doomed = start_worker(env={"SYNC_BATCH_SIZE": "100"})  # many batches: time to act
    newer = register(client, mostly_the_same(60_000, every=10), dataset)
    task_id = sync(client, newer["file_id"])["task_id"]
    wait_under_way(client, task_id, rows=5_000)
    doomed.kill()
    committed = status(client, task_id)["progress"]["current"]

    start_worker(env={"SYNC_BATCH_SIZE": "100"})
    done = wait_state(client, task_id, "SUCCESS", timeout=120)

    assert done["attempts"] == 2
    assert committed < 60_000
    result = {k: done["result"][k] for k in ("rows_read", "inserted", "updated", "unchanged")}
    assert result == {"rows_read": 60_000, "inserted": 0, "updated": 6_000, "unchanged": 54_000}
    assert dataset_info(client, dataset)["record_count"] == 60_000


@pytest.mark.slow
def test_a_resync_cancelled_while_reading_ahead_stops_and_the_file_syncs_again_later(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    dataset = new_dataset()
    first_sync(client, start_worker, dataset, rows=60_000)
    start_worker(env={"SYNC_BATCH_SIZE": "100"})  # many batches: time to act
    newer = register(client, mostly_the_same(60_000, every=10), dataset)
    task_id = sync(client, newer["file_id"])["task_id"]
    wait_under_way(client, task_id, rows=2_000)

    assert client.delete(f"/api/data-sync/cancel-task/{task_id}").json()["state"] == "REVOKED"
    wait_for(
        lambda: (
            next(
                f["last_sync_state"]
                for f in dataset_info(client, dataset)["files"]
                if f["file_id"] == newer["file_id"]
            )
            == "REVOKED"
        ),
        20,
        what="the re-sync to stop",
    )

    again = wait_state(client, sync(client, newer["file_id"])["task_id"], "SUCCESS", timeout=120)
    assert again["result"]["rows_read"] == 60_000
    assert again["result"]["inserted"] == 0
    # The cancelled run's batches were committed: their changed rows are unchanged now.
    assert 0 < again["result"]["updated"] < 6_000
    assert again["result"]["updated"] + again["result"]["unchanged"] == 60_000
    assert dataset_info(client, dataset)["record_count"] == 60_000


def test_a_higher_priority_sync_queued_later_runs_first(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    registrar = start_worker()
    dataset = new_dataset()
    files = [register(client, csv_bytes(10, version=f"p{i}"), dataset) for i in range(4)]
    registrar.stop()
    low = [sync(client, f["file_id"], priority=1)["task_id"] for f in files[:3]]
    high = sync(client, files[3]["file_id"], priority=9)["task_id"]
    start_worker()

    started = {t: wait_state(client, t, "SUCCESS")["started_at"] for t in [*low, high]}
    assert started[high] < min(started[t] for t in low)


@pytest.mark.slow
def test_a_sync_runs_locally_with_redis_down(client: httpx.Client, redis_up: RedisServer) -> None:
    dataset = new_dataset()
    redis_up.kill()
    wait_for(lambda: client.get("/health").json()["broker"] == "down", 5, what="broker down")
    f = register(client, csv_bytes(3_000), dataset)

    accepted = sync(client, f["file_id"])
    done = wait_state(client, accepted["task_id"], "SUCCESS", timeout=60)

    assert accepted["executor"] == "local" and done["executor"] == "local"
    assert done["result"]["inserted"] == 3_000
    assert dataset_info(client, dataset)["record_count"] == 3_000


def test_a_batch_sync_runs_every_file(client: httpx.Client, start_worker: StartWorker) -> None:
    start_worker(concurrency=2)
    dataset = new_dataset()
    files = [register(client, csv_bytes(100, start=i * 100), dataset) for i in range(3)]

    response = client.post(
        "/api/data-sync/sync-batch",
        json={"file_ids": [f["file_id"] for f in files], "priority": 7},
    )

    assert response.status_code == 202
    for task_id in response.json()["task_ids"]:
        assert wait_state(client, task_id, "SUCCESS")["result"]["inserted"] == 100
    assert dataset_info(client, dataset)["record_count"] == 300


def test_files_dropped_into_the_inbox_are_registered_by_the_scan(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    import os
    import time
    from pathlib import Path

    start_worker()
    dataset = new_dataset()
    folder = Path(stack_env["DATA_DIR"]) / "inbox" / dataset
    folder.mkdir(parents=True)
    (folder / ".keys").write_text("order_id")
    (folder / "stock.csv").write_bytes(csv_bytes(20, version=dataset))
    (folder / "junk.csv").write_bytes(b"")
    old = time.time() - 60
    for p in folder.iterdir():
        os.utime(p, (old, old))

    scan = client.post("/api/tasks", json={"name": "data_sync.scan_inbox"}).json()
    report = wait_state(client, scan["task_id"], "SUCCESS")["result"]

    assert [r["name"] for r in report["registered"]] == ["junk.csv", "stock.csv"]
    assert not (folder / "stock.csv").exists()
    file_id = report["registered"][1]["file_id"]
    done = wait_state(client, sync(client, file_id)["task_id"], "SUCCESS")
    assert done["result"]["inserted"] == 20
