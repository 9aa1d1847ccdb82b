"""No one gets in without a token (DESIGN.md, invariant 7).

The test walks every route of ``create_app()``, so a route added later is checked without
anyone remembering to add it here, and sends each one a request with no Authorization
header, with a malformed one (``Basic …``, ``Bearer`` with no token) and with a wrong
token, to the live API process: every answer must be 401 with ``WWW-Authenticate: Bearer``.

Which routes are public, and why (the app and this test agree on exactly this set):

- ``GET /health``: the contract says so; load balancers and the launcher poll it.
- The API's description: ``/openapi.json``, ``/docs`` (and its ``/docs/oauth2-redirect``)
  and ``/redoc``. They hold no data and start no work; they describe the routes, the one
  security scheme included, and a browser cannot send a bearer token to open ``/docs``,
  whose "Authorize" button is how a person then calls the API with one. Invariant 7 is
  read as "every route of the API"; the documentation routes are FastAPI's, not the
  contract's. If they ever must be closed, drop them from ``backend/dashboard`` (and set
  ``openapi_url`` to None in ``create_app()``) and from PUBLIC below.
- ``/dashboard``: a static page (backend/dashboard/static) with no data in it; it asks for
  a token and sends it as a bearer header on the API calls it makes, which are guarded.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import fastapi.routing
import httpx
import pytest
from starlette.routing import BaseRoute

from backend.main import create_app
from tests.support import TOKEN, Api

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/dashboard"),
}
BAD_CREDENTIALS = {
    "no header": {},
    "basic": {"Authorization": "Basic eDp5"},
    "bearer without token": {"Authorization": "Bearer"},
    "empty header": {"Authorization": ""},
    "wrong scheme, right token": {"Authorization": f"Token {TOKEN}"},
    "wrong token": {"Authorization": "Bearer wrong-token"},
    "prefix of the token": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token with more": {"Authorization": f"Bearer {TOKEN}x"},
}
PLACEHOLDER = "probe1"  # fits every path parameter's pattern (ids, session ids, datasets)


def _routes(routes: list[BaseRoute]) -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers whatever the FastAPI
    version keeps in ``app.routes``."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    found = contexts(routes) if contexts else routes
    for route in found:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path and methods:
            yield path, set(methods) - {"HEAD"}


ROUTES = sorted(
    (method, path) for path, methods in _routes(create_app().routes) for method in methods
)
GUARDED = [r for r in ROUTES if r not in PUBLIC]


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", PLACEHOLDER, path)


@pytest.fixture
def anonymous(api: Api) -> Iterator[httpx.Client]:
    with api.client(token=None) as c:
        yield c


def test_the_walk_finds_every_documented_operation_and_the_public_set_exists() -> None:
    app = create_app()
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented <= set(ROUTES)
    assert set(ROUTES) >= PUBLIC
    assert len(GUARDED) >= 20


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
def test_every_route_but_the_public_ones_is_401_without_a_valid_token(
    anonymous: httpx.Client, method: str, path: str
) -> None:
    for what, headers in BAD_CREDENTIALS.items():
        response = anonymous.request(method, _url(path), headers=headers)
        assert response.status_code == 401, (what, response.status_code, response.text[:300])
        assert response.headers["WWW-Authenticate"] == "Bearer", what
        assert response.json() == {"detail": "missing or invalid bearer token"}, what


@pytest.mark.parametrize(("method", "path"), sorted(PUBLIC))
def test_the_public_routes_answer_without_a_token(
    anonymous: httpx.Client, method: str, path: str
) -> None:
    response = anonymous.request(method, path)
    assert response.status_code == 200, response.text[:300]


def test_the_token_is_what_opens_the_door(api: Api) -> None:
    """The control: the same requests with a valid token (either configured one) pass."""
    for token in (TOKEN, "second-token"):
        with api.client(token=token) as c:
            assert c.get("/api/tasks", params={"limit": 1}).status_code == 200
            assert c.get(f"/api/tasks/{PLACEHOLDER}").status_code == 404
    with api.client(token=None) as c:
        lower = c.get("/api/tasks", headers={"Authorization": f"bearer {TOKEN}"})
        assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)


@pytest.mark.parametrize("path", ["/api/data-sync/files", "/api/tasks"])
def test_an_unauthenticated_body_is_refused_before_it_is_read(api: Api, path: str) -> None:
    """A request that declares a gigabyte and sends none of it gets its 401 at once: the
    body of a request without a valid token is never read (nor spooled to disk)."""
    host, port = api.base_url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {10**9}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nAuthorization: Bearer nope\r\n\r\n"
    )
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
