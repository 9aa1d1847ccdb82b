"""The vocabulary route signatures are written in: ``RuntimeDep``, ``IdempotencyKey``,
and the bearer-token guard every router but /health hangs on itself."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.config import Settings
from backend.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="A token from API_TOKENS")


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$"),
]


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Constant-time comparison against every configured token; no token configured
    means nobody gets in (fail closed)."""
    supplied = credentials.credentials.encode() if credentials else b""
    matched = False
    for token in settings.api_tokens:
        matched |= secrets.compare_digest(supplied, token.encode())
    if not credentials or not matched:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


Authenticated = [Depends(require_token)]
