"""Defaults for a bare run on the machine where ``./scripts/start.sh`` runs: the token and
the Redis the launcher wrote down, so ``python scripts/test_celery_task_status.py`` with no
arguments checks that stack (its users run it so; it used to stop at "no token").

Read from the project's settings (``backend.config``: the environment and ``.env``) when
the script runs in the project's virtualenv, else from ``DATA_DIR`` (default ``./data``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis

TOKEN_FILE = "api_token"
REDIS_PASSWORD_FILE = "redis_password"


def _settings() -> object | None:
    try:
        from backend.config import Settings  # the project's settings, when installed
    except ImportError:
        return None
    try:
        return Settings()
    except Exception:  # a malformed .env: fall back to DATA_DIR alone
        return None


def data_dir(settings: object | None) -> Path:
    configured = getattr(settings, "data_dir", None)
    return Path(configured or os.environ.get("DATA_DIR") or "data")


def token(settings: object | None) -> tuple[str | None, str]:
    """The API token and where it came from (the settings read the launcher's file
    themselves when API_TOKENS names none)."""
    path = data_dir(settings) / TOKEN_FILE
    written = path.read_text().strip() if path.is_file() else ""
    tokens = [str(t) for t in getattr(settings, "api_tokens", None) or []]
    if tokens:
        return tokens[0], str(path) if tokens == [written] else "API_TOKENS"
    return (written, str(path)) if written else (None, "")


def redis_url(settings: object | None, given: str | None) -> tuple[str | None, str]:
    """The Redis the launcher uses: the URL given (or the settings'), with the password the
    launcher made for its embedded Redis when the URL names none, that file exists and
    the Redis refuses us without it."""
    url = given or str(getattr(settings, "redis_url", "") or "")
    if not url:
        return None, ""
    source = "the Redis URL given" if given else "the settings' REDIS_URL"
    parts = urlsplit(url)
    password_file = data_dir(settings) / REDIS_PASSWORD_FILE
    if parts.password or not password_file.is_file() or not _wants_a_password(url):
        return url, source
    password = quote(password_file.read_text().strip(), safe="")
    netloc = f":{password}@{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    return urlunsplit(parts._replace(netloc=netloc)), f"{source} and {password_file}"


def _wants_a_password(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc) or "authenticated" in str(exc)
    except redis.RedisError:
        return False
    finally:
        client.close()
    return False


def fill_in(
    token_given: str | None, redis_given: str | None
) -> tuple[str | None, str | None, list[str]]:
    """The token and Redis URL to use, and one line per default taken (to tell the user)."""
    settings = _settings()
    notes: list[str] = []
    if not token_given:
        token_given, source = token(settings)
        if token_given:
            notes.append(f"token: from {source} (no --token, no API_TOKEN)")
    url, source = redis_url(settings, redis_given)
    if url and url != redis_given:
        notes.append(f"Redis: from {source} (the memory check)")
    redis_given = url
    return token_given, redis_given, notes
