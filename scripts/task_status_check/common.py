"""What more than one step needs: task states, the hints shown to the operator, the two
ways a check ends other than passing, and small formatting helpers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
RUNNING = frozenset({"STARTED", "PROGRESS"})
POLL_INTERVAL = 0.25

WORKER_HINT = (
    "is a worker running? start one with "
    "`celery -A backend.celery_app worker -Q database,data_sync,scheduled,default` "
    "(./scripts/start.sh starts the API and a worker together)"
)
API_HINT = "is the API running? start it with ./scripts/start.sh (or python -m backend.serve)"
TOKEN_HINT = "the token was refused: pass --token or set API_TOKEN to one of the API's API_TOKENS"
REDIS_HINT = "the API cannot reach Redis: check REDIS_URL and that redis-server is running"
DATABASE_HINT = "the API cannot reach its database: check DATABASE_URL"
REDIS_PASSWORD_HINT = (
    "give its password in --redis-url (redis://:PASSWORD@host:port/0); the Redis that "
    "scripts/start_celery_services.py starts keeps its password in data/redis_password"
)


class Fail(Exception):
    """A check's failure, raised from however deep in a step, with what to show in the
    result column (``result``) besides the reason."""

    def __init__(self, reason: str, result: str = "") -> None:
        super().__init__(reason)
        self.reason, self.result = reason, result


class Skip(Exception):
    """A check that cannot mean anything this run (an earlier one failed, an option is
    missing): reported as skipped, so it neither passes nor fails the run."""


def describe(status: dict[str, Any]) -> str:
    state = str(status.get("state"))
    progress = status.get("progress") or {}
    if not progress:
        return state
    current, total = progress.get("current"), progress.get("total")
    text = f"{state} {current}/{total}" if total else f"{state} {current}"
    if progress.get("percent") is not None:
        text += f" ({progress['percent']:.0f}%)"
    if progress.get("message"):
        text += f" {progress['message']}"
    return text


def error_text(status: dict[str, Any] | None) -> str:
    error = (status or {}).get("error") or {}
    return f"{error.get('type', '?')}: {error.get('message', '')}" if error else "no error given"


def detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return json.dumps(body)[:300]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def redact(url: str) -> str:
    """The URL with its password hidden, since the report may be pasted anywhere."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def generated_csv(rows: int, tag: str) -> bytes:
    lines = [f"{i},item-{i},{tag}-{i % 1000}\n" for i in range(1, rows + 1)]
    return ("id,name,value\n" + "".join(lines)).encode()


def megabytes(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"
