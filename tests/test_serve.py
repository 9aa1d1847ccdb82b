"""How the API is served (backend/serve.py): an idle connection outlives the client's pool.

httpx keeps an idle connection 5 s; had the server also closed it at 5 s, a client that
waited that long could send on it as it closed and get no answer (a CI run failed so).
"""

from __future__ import annotations

import http.client
import time

from tests.support import Api


def test_an_idle_connection_is_still_served_after_the_clients_pool_would_drop_it(
    api: Api,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        sock = conn.sock

        time.sleep(6)  # longer than httpx's pool and uvicorn's default keep-alive (5 s)

        conn.request("GET", "/health")  # on the same socket: no reconnect hides a close
        assert conn.sock is sock
        second = conn.getresponse()  # uvicorn's default: RemoteDisconnected here
        second.read()
        assert second.status == 200
    finally:
        conn.close()
