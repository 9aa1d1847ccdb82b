"""GET /metrics: Prometheus' text format (backend/runtime/metrics.py says what is in it).

A bearer token, as everywhere, unless METRICS_PUBLIC_ON_LOOPBACK lets a scraper on this
machine (127.0.0.1, ::1) in without one.
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Depends, Request, Response

from backend.api.deps import BearerCredentials, RuntimeDep, SettingsDep, require_token
from backend.runtime import METRICS_CONTENT_TYPE


def _on_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def metrics_access(
    request: Request, settings: SettingsDep, _credentials: BearerCredentials
) -> None:
    if settings.metrics_public_on_loopback and _on_loopback(request):
        return
    require_token.check(request)


router = APIRouter(tags=["metrics"], dependencies=[Depends(metrics_access)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(await runtime.metrics_text(), media_type=METRICS_CONTENT_TYPE)
