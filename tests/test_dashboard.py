"""The dashboard (/dashboard, backend/dashboard/static) in a real Chromium against the real
stack: the API process, Celery workers, Redis, the ledger's database. The page may reach
127.0.0.1 only (tests/browser.py); each test ends by asserting it needed nothing else."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import Browser
from tests.conftest import StartWorker
from tests.helpers import submit, wait_final, wait_state
from tests.support import TOKEN, Api, free_port

TIMEOUT_MS = 30_000


def log_in(browser: Browser, api: Api, token: str = TOKEN) -> None:
    page = browser.page
    page.goto(f"{api.base_url}/dashboard")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.locator("#app").wait_for(state="visible")
    assert token not in page.url


def row(task_id: str) -> str:
    return f"#tasks tr[data-task-id='{task_id}']"


def test_logging_in_keeps_the_token_out_of_urls_and_shows_the_ledger(
    api: Api, client: httpx.Client, start_worker: StartWorker, browser: Browser, tmp_path: Path
) -> None:
    start_worker()
    page = browser.page
    task = submit(client, "system.noop")
    wait_final(client, task["task_id"])

    page.goto(f"{api.base_url}/dashboard")
    page.fill("#token", "wrong-token")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('not accepted')")
    assert page.locator("#app").is_hidden()

    log_in(browser, api)
    page.wait_for_selector(f"{row(task['task_id'])} td.state:has-text('SUCCESS')")
    page.wait_for_selector("#live:has-text('live')", timeout=TIMEOUT_MS)
    page.wait_for_selector("#queues tr[data-queue='data_sync']")
    # The chart draws the ledger's finishes (GET /api/system/throughput), the noop's among them.
    page.wait_for_function(
        "Number(document.querySelector('#chart').dataset.finished || 0) >= 1",
        timeout=TIMEOUT_MS,
    )
    assert "from the ledger" in (page.locator("#chart text").text_content() or "")
    assert any("/api/system/throughput" in url for url in browser.requested)
    assert page.evaluate("sessionStorage.getItem('syncq.dashboard.token')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    assert "wrong-token" not in page.url and TOKEN not in page.url

    page.reload()  # the session keeps the login, as sessionStorage does
    page.locator("#app").wait_for(state="visible")
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

    page.click("#logout")
    page.locator("#login").wait_for(state="visible")
    assert page.evaluate("sessionStorage.length") == 0
    assert browser.blocked == [], browser.blocked
    # The page called the API (and its event stream) with the token in a header only.
    assert any("/api/events" in url for url in browser.requested), browser.requested
    assert not [url for url in browser.requested if TOKEN in url or "token=" in url]
    assert not [e for e in browser.console_errors if "Content Security Policy" in e]


def test_a_sync_s_progress_bar_reaches_100_and_its_dataset_shows_the_records(
    api: Api, client: httpx.Client, start_worker: StartWorker, browser: Browser, tmp_path: Path
) -> None:
    start_worker()
    dataset = f"ds-{uuid.uuid4().hex[:10]}"
    rows = 20_000
    content = "order_id,sku\n" + "".join(f"{i},S{i % 7}\n" for i in range(rows))
    registered = client.post(
        "/api/data-sync/files",
        files={"file": ("orders.csv", io.BytesIO(content.encode()), "text/csv")},
        data={"dataset": dataset, "key_columns": "order_id"},
        timeout=60,
    )
    assert registered.status_code == 201, registered.text
    file_id = registered.json()["file_id"]

    log_in(browser, api)
    page = browser.page
    page.wait_for_selector("#live:has-text('live')", timeout=TIMEOUT_MS)
    page.wait_for_selector(f"#files tr[data-file-id='{file_id}']", timeout=TIMEOUT_MS)

    # Start the sync from the page (its "Sync" button: POST /api/data-sync/sync-single-file).
    seen: list[float] = []
    page.expose_function("reportProgress", lambda value: seen.append(float(value)))
    page.click(f"#files tr[data-file-id='{file_id}'] button.sync")
    page.wait_for_selector("#notice:has-text('submitted')")
    task_id = page.locator("#notice").inner_text().split(": ")[1].split(" ")[0]
    page.evaluate(
        """(sel) => {
            const watch = () => {
              const bar = document.querySelector(sel + " progress");
              if (bar) window.reportProgress(bar.value);
            };
            new MutationObserver(watch).observe(document.querySelector("#tasks tbody"),
              {childList: true, subtree: true, attributes: true});
        }""",
        row(task_id),
    )
    page.wait_for_selector(f"{row(task_id)} td.state:has-text('SUCCESS')", timeout=90_000)
    bar = page.locator(f"{row(task_id)} progress")
    assert bar.get_attribute("value") == "100"
    assert page.locator(f"{row(task_id)} .percent").inner_text() == "100 %"
    assert seen and seen[-1] == 100, seen
    done = wait_final(client, task_id)
    assert done["state"] == "SUCCESS" and done["progress"]["current"] == rows

    # The sync's end refreshes the datasets: the record count and the file's last state.
    page.wait_for_selector(
        f"#datasets tr[data-dataset='{dataset}'] .records:has-text('{rows}')", timeout=TIMEOUT_MS
    )
    page.wait_for_selector(
        f"#files tr[data-file-id='{file_id}'] td.state:has-text('SUCCESS')", timeout=TIMEOUT_MS
    )
    page.screenshot(path=tmp_path / "sync.png", full_page=True)
    assert browser.blocked == [], browser.blocked


def test_a_running_task_cancelled_from_the_page_ends_revoked(
    api: Api, client: httpx.Client, start_worker: StartWorker, browser: Browser
) -> None:
    start_worker()
    task = submit(client, "system.sleep", seconds=30, steps=60)
    wait_state(client, task["task_id"], {"STARTED", "PROGRESS"})

    log_in(browser, api)
    page = browser.page
    button = page.locator(f"{row(task['task_id'])} button.cancel")
    button.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert page.locator(f"{row(task['task_id'])} td.state").inner_text() in {"STARTED", "PROGRESS"}
    button.click()

    page.wait_for_selector(f"{row(task['task_id'])} td.state:has-text('REVOKED')")
    assert page.locator(f"{row(task['task_id'])} button.cancel").count() == 0
    assert wait_final(client, task["task_id"])["state"] == "REVOKED"
    assert browser.blocked == [], browser.blocked


@pytest.fixture(scope="module")
def redisless_api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    """An API whose Redis is a port nobody listens on (as tests/test_resource_bounds.py's):
    everything it accepts runs on its local executor; same ledger database as ``api``."""
    env = stack_env | {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "RECOVERY_INTERVAL_SECONDS": "3600",  # leave other tests' tasks to their own sweeps
    }
    server = Api(env, workdir / "logs", name="api-redisless-dashboard")
    server.start()
    yield server
    server.stop()


def test_with_redis_down_the_dashboard_works_and_shows_the_task_that_ran_locally(
    redisless_api: Api, api: Api, browser: Browser, tmp_path: Path
) -> None:
    with redisless_api.client() as c:
        assert c.get("/health").json()["broker"] == "down"
        task = submit(c, "system.sleep", seconds=0.5, steps=2)
        assert task["executor"] == "local"
        assert wait_final(c, task["task_id"])["state"] == "SUCCESS"

    log_in(browser, redisless_api)
    page = browser.page
    ran = row(task["task_id"])
    page.wait_for_selector(f"{ran} td.state:has-text('SUCCESS')", timeout=TIMEOUT_MS)
    assert page.locator(f"{ran} td.executor").inner_text() == "local"
    assert page.locator(f"{ran} .percent").inner_text() == "100 %"
    page.wait_for_selector("#health:has-text('broker down')", timeout=TIMEOUT_MS)
    page.wait_for_selector("#queues-broker:has-text('broker down')", timeout=TIMEOUT_MS)
    page.wait_for_selector("#workers-count:has-text('broker down')", timeout=TIMEOUT_MS)
    page.wait_for_selector("#live:has-text('live')", timeout=TIMEOUT_MS)  # the API's own hub
    page.screenshot(path=tmp_path / "redis-down.png", full_page=True)

    # The same ledger, seen from the API whose Redis is up: the task is there, ran locally.
    log_in(browser, api)
    page.wait_for_selector(f"{ran} td.executor:has-text('local')", timeout=TIMEOUT_MS)
    assert browser.blocked == [], browser.blocked
