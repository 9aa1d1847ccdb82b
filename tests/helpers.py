"""Small helpers the tests read as sentences: submit, then wait for a state; register a
file by running its body in this process."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import uuid
from typing import Any

import httpx

from backend.config import Settings
from backend.constants import TaskName
from backend.runtime.inprocess import run_body
from tests.support import wait_for

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def submit(
    client: httpx.Client, name: str, headers: dict[str, str] | None = None, **args: Any
) -> dict[str, Any]:
    priority = args.pop("priority", 5)
    response = client.post(
        "/api/tasks", json={"name": name, "args": args, "priority": priority}, headers=headers
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/api/tasks/{response.json()['task_id']}"
    body: dict[str, Any] = response.json()
    return body


def status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(f"/api/tasks/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_state(
    client: httpx.Client, task_id: str, states: set[str] | str = "SUCCESS", timeout: float = 30
) -> dict[str, Any]:
    wanted = {states} if isinstance(states, str) else states
    found: dict[str, Any] = wait_for(
        lambda: (s := status(client, task_id))["state"] in wanted and s,
        timeout,
        interval=0.1,
        what=f"task {task_id} to reach {sorted(wanted)}",
    )
    return found


def wait_final(client: httpx.Client, task_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_state(client, task_id, FINAL, timeout)


class EventStream:
    """An SSE client on GET /api/events, reading in a thread so a test can act meanwhile.

    ``events`` holds every parsed event: {"id", "event", "data"} with data decoded."""

    def __init__(
        self, client: httpx.Client, *, last_event_id: str | None = None, **params: Any
    ) -> None:
        import threading

        self.events: list[dict[str, Any]] = []
        self.status_code: int | None = None
        # A client of its own: the stream outlives the test's requests on the other one.
        self.client = httpx.Client(base_url=client.base_url, headers=client.headers)
        self.closing = False
        self.headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.params = {"max_seconds": 120, **params}
        self.opened = threading.Event()
        self.socket: socket.socket | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "the event stream did not open"

    def _read(self) -> None:
        try:
            self._follow()
        except httpx.HTTPError:
            if not self.closing:
                raise
        finally:
            self.opened.set()

    def close(self) -> None:
        """Shut the socket down: closing the client from this thread would not wake the
        reader's blocked recv, and each close waited out its join timeout."""
        self.closing = True
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.client.close()

    def _follow(self) -> None:
        import json

        current: dict[str, Any] = {}
        with self.client.stream(
            "GET", "/api/events", params=self.params, headers=self.headers, timeout=130
        ) as response:
            self.status_code = response.status_code
            self.socket = response.extensions["network_stream"].get_extra_info("socket")
            self.opened.set()
            for line in response.iter_lines():
                if not line:
                    if "data" in current:
                        current["data"] = json.loads(current["data"])
                        self.events.append(current)
                    current = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    current[field] = value.removeprefix(" ")

    def of_task(self, task_id: str) -> list[dict[str, Any]]:
        return [
            e["data"]
            for e in list(self.events)
            if e.get("event") == "task" and e["data"].get("task_id") == task_id
        ]

    def states(self, task_id: str) -> list[str]:
        return [e["state"] for e in self.of_task(task_id)]

    def wait_for_state(self, task_id: str, state: str, timeout: float = 30) -> list[str]:
        wait_for(lambda: state in self.states(task_id), timeout, what=f"{state} event")
        return self.states(task_id)


async def register_in_process(
    settings: Settings, content: bytes, dataset: str, keys: tuple[str, ...] = ("sku",)
) -> int:
    """Store ``content`` as an upload and run the registration body here; its file id."""
    uploads = settings.data_dir.resolve() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    path = uploads / f"{uuid.uuid4().hex}.csv"
    path.write_bytes(content)
    run = await run_body(
        TaskName.REGISTER_FILE,
        {
            "stored_path": str(path),
            "original_name": "items.csv",
            "size": len(content),
            "checksum": hashlib.sha256(content).hexdigest(),
            "dataset": dataset,
            "key_columns": list(keys),
        },
        settings=settings,
    )
    return int(run.result["file_id"])
