"""The pages a browser opens: the API docs (``/docs``, ``/redoc``) and the operator
dashboard (``/dashboard``). Nothing here comes from a CDN: Swagger UI and ReDoc are the
files the fastapi-offline wheel ships, the dashboard is the HTML, JS and CSS beside this
module (``static/``, package data). The pages carry no data and need no token (the
dashboard asks for one and sends it as ``Authorization: Bearer`` on every API call, as any
client does); each is sent with a Content-Security-Policy that lets the page reach
nothing but this origin, so a browser without internet never waits on one.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DASHBOARD_ASSETS = Path(__file__).parent / "static"
DOCS_ASSETS_URL = "/static-offline-docs"
DASHBOARD_ASSETS_URL = "/dashboard/assets"

_SELF_ONLY = (
    "default-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _csp(script: str, style: str) -> str:
    return f"{_SELF_ONLY}; script-src {script}; style-src {style}"


# Swagger UI starts from one inline script (allowed by its nonce) and, like ReDoc, styles
# its elements inline; ReDoc's sidebar shows a logo from cdn.redoc.ly, refused here (it
# then shows none). The dashboard has neither inline scripts nor inline styles.
DASHBOARD_CSP = _csp("'self'", "'self'")
REDOC_CSP = _csp("'self'", "'self' 'unsafe-inline'")


def _headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def install_pages(app: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc, /dashboard and their static files (create
    the app with ``docs_url=None, redoc_url=None``)."""
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount(
        DASHBOARD_ASSETS_URL, StaticFiles(directory=DASHBOARD_ASSETS), name="dashboard-assets"
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        nonce = secrets.token_urlsafe(16)
        html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
        csp = _csp(f"'self' 'nonce-{nonce}'", "'self' 'unsafe-inline'")
        return HTMLResponse(html, headers=_headers(csp))

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return HTMLResponse(bytes(page.body), headers=_headers(REDOC_CSP))

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(
            DASHBOARD_ASSETS / "index.html", media_type="text/html", headers=_headers(DASHBOARD_CSP)
        )
