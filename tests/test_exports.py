"""Exports and reports through the API, with real workers on both databases: round trips
of every format and encoding (an export registered and synced into a new dataset gives
the same records), formulas kept out, cancel and kill -9 mid-export, reports, and the
read contract (auth, 404, 202 while running, 409 once failed or cancelled)."""

from __future__ import annotations

import csv
import io
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from tests.conftest import StartBeat, StartWorker
from tests.helpers import status, wait_final, wait_state
from tests.support import wait_for
from tests.test_data_sync import register, sync

NAMES = ["苹果", "香蕉 🍌", 'say "hi", then\nleave', "plain", "-5", "1.5e3", "ümlaut"]


def new_dataset() -> str:
    return f"ex-{uuid.uuid4().hex[:10]}"


def source_csv(rows: int, extra: dict[int, str] | None = None) -> bytes:
    """Rows with Chinese, emoji, quotes, commas, a newline and negative numbers: none
    empty (an empty XLSX cell reads back as null) and none a formula (see
    test_formulas_come_back_as_text)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["order_id", "name", "qty", "note"])
    for i in range(rows):
        name = (extra or {}).get(i, NAMES[i % len(NAMES)])
        writer.writerow([str(i), name, str(i % 13 - 6), f"n{i % 97}"])
    return out.getvalue().encode()


def synced(client: httpx.Client, content: bytes, name: str = "orders.csv") -> str:
    dataset = new_dataset()
    f = register(client, content, dataset, name=name)
    done = wait_state(client, sync(client, f["file_id"])["task_id"], "SUCCESS", timeout=180)
    assert done["result"]["rejected"] == 0, done["result"]
    return dataset


def start_export(client: httpx.Client, dataset: str, **body: Any) -> str:
    response = client.post(f"/api/data-sync/datasets/{dataset}/exports", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["export_id"] == accepted["task_id"]
    assert response.headers["Location"] == f"/api/tasks/{accepted['task_id']}"
    export_id: str = accepted["export_id"]
    return export_id


def describe(client: httpx.Client, export_id: str) -> dict[str, Any]:
    response = client.get(f"/api/exports/{export_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished_export(client: httpx.Client, export_id: str, timeout: float = 120) -> dict[str, Any]:
    ended = wait_final(client, export_id, timeout=timeout)
    assert ended["state"] == "SUCCESS", ended
    return describe(client, export_id)


def download(client: httpx.Client, export_id: str) -> httpx.Response:
    return client.get(f"/api/exports/{export_id}/download", timeout=60)


def records_of(client: httpx.Client, dataset: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    while True:
        page = client.get(
            f"/api/data-sync/datasets/{dataset}/records",
            params={"limit": 1000, "offset": len(found)},
        ).json()["records"]
        found |= {r["key"]: r["data"] for r in page}
        if len(page) < 1000:
            return found


def exports_dir(stack_env: dict[str, str]) -> Path:
    return Path(stack_env["DATA_DIR"]).resolve() / "exports"


EXTENSIONS = {"csv": "csv", "jsonl": "jsonl", "xlsx": "xlsx"}


@pytest.mark.parametrize(
    ("fmt", "encoding"),
    [
        ("csv", "utf-8"),
        ("csv", "utf-8-sig"),
        ("csv", "gb18030"),
        ("jsonl", "utf-8"),
        ("jsonl", "gb18030"),
        ("xlsx", "utf-8"),
    ],
)
def test_an_export_synced_into_a_new_dataset_gives_the_same_records(
    client: httpx.Client, start_worker: StartWorker, fmt: str, encoding: str
) -> None:
    start_worker()
    dataset = synced(client, source_csv(3000))
    export_id = start_export(client, dataset, format=fmt, encoding=encoding)

    described = finished_export(client, export_id)
    assert described["state"] == "SUCCESS" and described["rows"] == 3000
    assert described["columns"] == ["order_id", "name", "qty", "note"]
    assert described["download"] == f"/api/exports/{export_id}/download"
    assert described["expires_at"] > described["finished_at"]
    response = download(client, export_id)
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert disposition == f'attachment; filename="{dataset}.{EXTENSIONS[fmt]}"'
    assert len(response.content) == described["bytes"]
    if encoding == "gb18030":
        assert response.headers["content-type"].endswith("charset=gb18030")
        assert "苹果".encode("gb18030") in response.content
    if encoding == "utf-8-sig":
        assert response.content.startswith(b"\xef\xbb\xbf")

    again = synced(client, response.content, name=f"back.{EXTENSIONS[fmt]}")
    assert records_of(client, again) == records_of(client, dataset)

    notices = client.get("/api/notifications", params={"limit": 100}).json()
    assert {"task_id": export_id, "state": "SUCCESS"}.items() <= next(
        n for n in notices if n["task_id"] == export_id
    ).items()


@pytest.mark.slow
def test_a_100k_record_dataset_round_trips_in_every_format(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset = synced(client, source_csv(100_000))
    reference = start_export(client, dataset, format="jsonl")
    finished_export(client, reference, timeout=180)
    expected = download(client, reference).content.decode().splitlines()
    assert len(expected) == 100_000

    for fmt, encoding in (("csv", "gb18030"), ("xlsx", "utf-8"), ("jsonl", "gb18030")):
        export_id = start_export(client, dataset, format=fmt, encoding=encoding)
        assert finished_export(client, export_id, timeout=300)["rows"] == 100_000
        again = synced(client, download(client, export_id).content, name=f"back.{fmt}")
        check = start_export(client, again, format="jsonl")
        finished_export(client, check, timeout=180)
        got = download(client, check).content.decode().splitlines()
        assert got == expected, fmt


FORMULAS = {1: "=1+1", 2: '=HYPERLINK("http://evil","x")', 3: "+cmd|' /C calc'!A0", 4: "@SUM(A1)"}


def test_formulas_come_back_as_text(client: httpx.Client, start_worker: StartWorker) -> None:
    start_worker()
    dataset = synced(client, source_csv(6, extra=FORMULAS | {5: "-2+3"}))
    original = records_of(client, dataset)

    xlsx_id = start_export(client, dataset, format="xlsx")
    finished_export(client, xlsx_id)
    workbook = download(client, xlsx_id).content
    sheet = load_workbook(io.BytesIO(workbook)).active
    names = {row[0].value: row[1] for row in sheet.iter_rows(min_row=2)}
    for i, text in (FORMULAS | {5: "-2+3"}).items():
        assert names[str(i)].value == text and names[str(i)].data_type == "s"
    assert records_of(client, synced(client, workbook, name="back.xlsx")) == original

    csv_id = start_export(client, dataset, format="csv")
    finished_export(client, csv_id)
    rows = {r[0]: r[1] for r in csv.reader(io.StringIO(download(client, csv_id).text))}
    assert rows["1"] == "'=1+1" and rows["3"] == "'+cmd|' /C calc'!A0"
    assert rows["4"] == "'@SUM(A1)" and rows["5"] == "'-2+3"
    assert rows["0"] == "苹果"


@pytest.mark.slow
def test_a_cancelled_export_leaves_no_file(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    start_worker(concurrency=2, env={"EXPORT_BATCH_SIZE": "1"})  # one for the reads
    dataset = synced(client, source_csv(20_000))
    export_id = start_export(client, dataset, format="xlsx")
    wait_for(
        lambda: (status(client, export_id).get("progress") or {}).get("current", 0) >= 200,
        60,
        what="the export to be under way",
    )
    assert any(exports_dir(stack_env).glob(f".partial-{export_id}-*"))
    running = download(client, export_id)
    assert running.status_code == 202
    assert running.headers["Location"] == f"/api/tasks/{export_id}"
    assert running.json()["state"] in {"STARTED", "PROGRESS"}

    assert client.delete(f"/api/tasks/{export_id}").json()["state"] == "REVOKED"

    wait_for(
        lambda: not any(exports_dir(stack_env).glob(f"*{export_id}*")),
        20,
        what="the partial file to be removed",
    )
    assert describe(client, export_id)["state"] == "REVOKED"
    assert describe(client, export_id)["download"] is None
    refused = download(client, export_id)
    assert refused.status_code == 409 and "REVOKED" in refused.json()["detail"]


@pytest.mark.slow
def test_an_export_killed_mid_way_finishes_on_another_worker(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    doomed = start_worker(env={"EXPORT_BATCH_SIZE": "1"})
    dataset = synced(client, source_csv(20_000))
    export_id = start_export(client, dataset, format="csv", encoding="gb18030")
    wait_for(
        lambda: (status(client, export_id).get("progress") or {}).get("current", 0) >= 500,
        60,
        what="the export to be under way",
    )
    doomed.kill()
    assert any(exports_dir(stack_env).glob(f".partial-{export_id}-*"))  # the dead run's

    start_worker()
    done = wait_state(client, export_id, "SUCCESS", timeout=120)

    assert done["attempts"] == 2
    rows = list(csv.reader(io.StringIO(download(client, export_id).content.decode("gb18030"))))
    assert len(rows) == 20_001 and len({r[0] for r in rows[1:]}) == 20_000
    assert [p.name for p in exports_dir(stack_env).glob(f"*{export_id}*")] == [f"{export_id}.csv"]


def test_a_report_is_computed_and_downloadable(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    dataset = synced(client, source_csv(500))
    body = {
        "group_by": ["name"],
        "aggregates": [
            {"op": "count"},
            {"op": "sum", "column": "qty"},
            {"op": "avg", "column": "qty"},
            {"op": "min", "column": "name"},
        ],
    }
    response = client.post(f"/api/data-sync/datasets/{dataset}/reports", json=body)
    assert response.status_code == 202, response.text
    report_id = response.json()["report_id"]
    assert response.headers["Location"] == f"/api/tasks/{report_id}"

    answer = client.get(f"/api/reports/{report_id}", params={"wait": 20})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    expected: dict[str, list[int]] = {}
    for i in range(500):
        expected.setdefault(NAMES[i % len(NAMES)], []).append(i % 13 - 6)
    assert report["columns"] == ["name", "count", "sum(qty)", "avg(qty)", "min(name)"]
    assert {row[0]: row[1:] for row in report["rows"]} == {
        # "-5" and "1.5e3" are numbers, the other names are not: min(name) only of those
        name: [len(q), sum(q), pytest.approx(sum(q) / len(q)), _min_number(name)]
        for name, q in expected.items()
    }
    assert status(client, report_id)["result"] == report

    as_csv = client.get(f"/api/reports/{report_id}", params={"format": "csv"})
    assert as_csv.headers["content-disposition"] == (f'attachment; filename="{dataset}-report.csv"')
    lines = list(csv.reader(io.StringIO(as_csv.content.decode("utf-8-sig"))))
    assert lines[0] == report["columns"] and len(lines) == len(report["rows"]) + 1
    assert any(line[0] == "-5" for line in lines)  # a number, not a formula: no prefix
    as_xlsx = client.get(f"/api/reports/{report_id}", params={"format": "xlsx"})
    sheet = load_workbook(io.BytesIO(as_xlsx.content)).active
    assert [c.value for c in next(sheet.iter_rows())] == report["columns"]


def _min_number(name: str) -> float | None:
    return {"-5": -5, "1.5e3": 1500}.get(name)


def test_reads_obey_the_contract(client: httpx.Client, start_worker: StartWorker) -> None:
    start_worker(env={"REPORT_MAX_GROUPS": "5"})
    assert client.get("/api/exports/nope").status_code == 404
    assert client.get("/api/exports/nope/download").status_code == 404
    assert client.get("/api/reports/nope").status_code == 404
    unknown = client.post("/api/data-sync/datasets/no-such-ds/exports", json={"format": "csv"})
    assert unknown.status_code == 404
    unknown = client.post(
        "/api/data-sync/datasets/no-such-ds/reports", json={"aggregates": [{"op": "count"}]}
    )
    assert unknown.status_code == 404

    dataset = synced(client, source_csv(10))
    for body in (
        {"format": "pdf"},
        {"encoding": "latin-1"},
        {"columns": []},
        {"filter": {'a"b': "x"}},
    ):
        assert (
            client.post(f"/api/data-sync/datasets/{dataset}/exports", json=body).status_code == 422
        )
    for body in (
        {"aggregates": []},
        {"aggregates": [{"op": "sum"}]},
        {"aggregates": [{"op": "median", "column": "qty"}]},
        {"group_by": ['a"b'], "aggregates": [{"op": "count"}]},
    ):
        assert (
            client.post(f"/api/data-sync/datasets/{dataset}/reports", json=body).status_code == 422
        )

    export_id = start_export(client, dataset)
    finished_export(client, export_id)
    assert client.get(f"/api/reports/{export_id}").status_code == 404  # not a report
    wrong = client.get(f"/api/exports/{export_id}", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401

    failing = client.post(
        f"/api/data-sync/datasets/{dataset}/reports",
        json={"group_by": ["order_id"], "aggregates": [{"op": "count"}]},
    ).json()["report_id"]
    assert wait_final(client, failing)["state"] == "FAILURE"
    refused = client.get(f"/api/reports/{failing}")
    assert refused.status_code == 409 and "more than 5 groups" in refused.json()["detail"]


@pytest.mark.slow
def test_a_scheduled_report_runs_again_until_its_schedule_is_deleted(
    client: httpx.Client, start_worker: StartWorker, start_beat: StartBeat
) -> None:
    start_worker()
    dataset = synced(client, source_csv(50))
    body = {"group_by": ["name"], "aggregates": [{"op": "count"}], "every_seconds": 10}
    response = client.post(f"/api/data-sync/datasets/{dataset}/reports", json=body)
    assert response.status_code == 202, response.text
    report_id = response.json()["report_id"]
    assert response.json()["schedule"] == f"report-{report_id}"
    first = client.get(f"/api/reports/{report_id}", params={"wait": 20}).json()
    start_beat()

    def firings() -> list[dict[str, Any]]:
        listed = client.get(
            "/api/tasks", params={"name": "reports.scheduled_report", "limit": 100}
        ).json()
        return [t for t in listed if t["state"] == "SUCCESS"]

    fired = wait_for(firings, 40, what="a firing of the schedule")
    again = client.get(f"/api/reports/{fired[0]['task_id']}").json()
    assert again == first | {"schedule": f"report-{report_id}"}

    assert client.delete(f"/api/reports/{report_id}/schedule").status_code == 204
    assert client.delete(f"/api/reports/{report_id}/schedule").status_code == 404
    settled = len(client.get("/api/tasks", params={"name": "reports.scheduled_report"}).json())
    time.sleep(12)  # longer than the interval: the entry is gone, so nothing fires
    after = client.get("/api/tasks", params={"name": "reports.scheduled_report"}).json()
    assert len(after) == settled
