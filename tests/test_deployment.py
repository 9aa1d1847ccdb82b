"""The compose file's defaults: no secret has a default, Flower is not published to the
world unless someone asks. Read from the file itself (compose is not run here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
SECRETS = ("API_TOKENS", "REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")


def test_compose_refuses_to_start_without_each_secret() -> None:
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{(\w+)(:?[-?])?[^}]*\}", text)

    for secret in SECRETS:
        forms = {form for name, form in uses if name == secret}
        assert forms == {":?"}, f"{secret} is used as {forms or 'nothing'}; want only :?"
    assert "change-me" not in text


def test_flower_is_published_on_loopback_unless_told_otherwise() -> None:
    flower = yaml.safe_load(COMPOSE.read_text())["services"]["flower"]

    assert flower["ports"] == ["${FLOWER_BIND:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"]
