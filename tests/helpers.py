"""Small HTTP helpers the tests read as sentences: submit, then wait for a state."""

from __future__ import annotations

from typing import Any

import httpx

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
