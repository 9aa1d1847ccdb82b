"""Settings: pure logic, no services."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import Settings
from backend.runtime.messages import celery_priority


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "REDIS_URL",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_DB",
        "REDIS_PASSWORD",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "DATABASE_URL",
        "API_TOKENS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_ones(tmp_path: Path) -> None:
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.celery_broker_url == s.celery_result_backend == s.redis_url
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'syncq.db'}"


def test_redis_parts_assemble_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.setenv("REDIS_DB", "2")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss word")
    s = Settings()
    assert s.redis_url == "redis://:p%40ss%20word@cache:6380/2"
    assert s.celery_broker_url == s.redis_url


def test_explicit_urls_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://a:1/0")
    monkeypatch.setenv("REDIS_HOST", "ignored")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://b:2/1")
    monkeypatch.setenv("DATABASE_URL", "")
    s = Settings()
    assert s.celery_broker_url == "redis://a:1/0"
    assert s.celery_result_backend == "redis://b:2/1"
    assert s.database_url.startswith("sqlite+aiosqlite:///")


def test_tokens_come_from_the_environment_or_the_token_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "api_token").write_text("from-file\n")
    assert Settings().api_tokens == ["from-file"]
    monkeypatch.setenv("API_TOKENS", " a, b ,,")
    assert Settings().api_tokens == ["a", "b"]


def test_api_priorities_map_to_redis_order() -> None:
    assert [celery_priority(p) for p in (9, 5, 0, 42, -3)] == [0, 4, 9, 0, 9]
