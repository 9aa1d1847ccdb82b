"""Conversations: saved, read and deleted through tasks on the database queue, and /run."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from backend.db.engine import make_unpooled_engine
from backend.db.queries import conversations
from tests.conftest import StartWorker
from tests.helpers import status, submit, wait_final, wait_state
from tests.support import Api, RedisServer, wait_for


def new_session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def save(client: httpx.Client, session: str, content: str, role: str = "user") -> str:
    response = client.post(
        f"/api/conversations/{session}/messages", json={"role": role, "content": content}
    )
    assert response.status_code == 202, response.text
    assert response.json()["name"] == "conversation.save_conversation"
    assert response.json()["queue"] == "database"
    task_id: str = response.json()["task_id"]
    return task_id


def read(client: httpx.Client, session: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/conversations/{session}", params={"wait": 10})
    assert response.status_code == 200, response.text
    assert response.json()["session_id"] == session
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def test_saved_messages_read_back_in_order(client: httpx.Client, start_worker: StartWorker) -> None:
    start_worker(concurrency=2)
    session = new_session()
    turns = [("system", "be brief"), ("user", "hello"), ("assistant", "hi"), ("user", "bye")]
    for role, content in turns:
        task_id = save(client, session, content, role)
    wait_state(client, task_id, "SUCCESS")
    wait_for(lambda: len(read(client, session)) == 4, 10, what="all four saved")

    messages = read(client, session)

    assert [(m["role"], m["content"]) for m in messages] == turns
    assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages)
    assert client.get("/history", params={"session_id": session}).json()["messages"] == messages


def test_deleting_a_session_leaves_nothing_and_unknown_sessions_are_a_no_op(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    session = new_session()
    wait_state(client, save(client, session, "to be forgotten"), "SUCCESS")

    deleted = client.delete(f"/api/conversations/{session}")
    assert deleted.status_code == 202
    assert wait_state(client, deleted.json()["task_id"], "SUCCESS")["result"]["deleted"] == 1
    assert read(client, session) == []

    nothing = client.delete(f"/api/conversations/{new_session()}")
    assert wait_state(client, nothing.json()["task_id"], "SUCCESS")["result"]["deleted"] == 0


def test_fifty_concurrent_saves_are_all_stored_once_in_arrival_order(
    client: httpx.Client, start_worker: StartWorker, api: Api
) -> None:
    start_worker(concurrency=2)
    session = new_session()

    def one(i: int) -> str:
        with api.client() as c:
            return save(c, session, f"message {i}")

    with ThreadPoolExecutor(max_workers=25) as pool:
        task_ids = list(pool.map(one, range(50)))
    for task_id in task_ids:
        wait_state(client, task_id, "SUCCESS")

    messages = read(client, session)
    assert sorted(m["content"] for m in messages) == sorted(f"message {i}" for i in range(50))
    assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages)
    assert len(messages) == 50


def test_run_stores_the_user_turn_and_the_reply(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    start_worker()
    session = new_session()

    first = client.post("/run", json={"user_input": "hello there", "session_id": session})
    second = client.post("/run", json={"user_input": "again", "session_id": session})

    assert first.status_code == 200, first.text
    assert first.json()["reply"] == f"You said: hello there (turn 1 of session {session}, 2 words)"
    assert second.json()["reply"].startswith("You said: again (turn 2")
    history = client.get("/history", params={"session_id": session}).json()["messages"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "hello there"),
        ("assistant", first.json()["reply"]),
        ("user", "again"),
        ("assistant", second.json()["reply"]),
    ]
    assert wait_state(client, first.json()["task_id"], "SUCCESS")["queue"] == "database"


def test_concurrent_runs_on_one_session_store_each_reply_after_its_turn(
    client: httpx.Client, start_worker: StartWorker, api: Api
) -> None:
    start_worker(concurrency=2)
    session = new_session()

    def one(i: int) -> dict[str, Any]:
        with api.client() as c:
            r = c.post("/run", json={"user_input": f"question {i}", "session_id": session})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(one, range(10)))

    history = read(client, session)
    assert len(history) == 20
    position = {(m["role"], m["content"]): i for i, m in enumerate(history)}
    for i, r in enumerate(replies):
        assert position[("user", f"question {i}")] < position[("assistant", r["reply"])]


def test_a_read_that_takes_longer_than_wait_answers_202_with_its_task(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    session = new_session()
    response = client.get(f"/api/conversations/{session}", params={"wait": 0})

    assert response.status_code == 202
    assert response.headers["Location"] == f"/api/tasks/{response.json()['task_id']}"
    start_worker()
    done = wait_state(client, response.json()["task_id"], "SUCCESS")
    assert done["result"] == {
        "session_id": session,
        "messages": [],
        "next": None,
        "has_more": False,
    }


@pytest.mark.slow
def test_conversations_work_with_redis_down(client: httpx.Client, redis_up: RedisServer) -> None:
    session = new_session()
    redis_up.kill()
    wait_for(lambda: client.get("/health").json()["broker"] == "down", 5, what="broker down")

    task_id = save(client, session, "offline hello")
    assert wait_state(client, task_id, "SUCCESS")["executor"] == "local"
    reply = client.post("/run", json={"user_input": "still there?", "session_id": session})
    assert reply.status_code == 200
    assert [m["content"] for m in read(client, session)] == [
        "offline hello",
        "still there?",
        reply.json()["reply"],
    ]
    deleted = client.delete(f"/api/conversations/{session}").json()
    wait_state(client, deleted["task_id"], "SUCCESS")
    assert read(client, session) == []


BAD_MESSAGES = [
    ({"role": "user", "content": ""}, "content"),
    ({"role": "user", "content": "   \n"}, "content"),
    ({"role": "user", "content": "x" * (64 * 1024 + 1)}, "content"),
    ({"role": "user", "content": "nul\x00byte"}, "content"),
    ({"role": "robot", "content": "beep"}, "role"),
    ({"content": "no role"}, "role"),
    ({"role": "user", "content": 42}, "content"),
]


@pytest.mark.parametrize(("body", "field"), BAD_MESSAGES)
def test_bad_messages_are_422_naming_the_field_and_store_nothing(
    client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    def saves() -> int:
        listed = client.get(
            "/api/tasks", params={"name": "conversation.save_conversation", "limit": 500}
        )
        return len(listed.json())

    before = saves()
    response = client.post(f"/api/conversations/{new_session()}/messages", json=body)

    assert response.status_code == 422
    assert field in [d["loc"][-1] for d in response.json()["detail"]]
    assert saves() == before


@pytest.mark.parametrize("session", ["a" * 65, "has space", "semi;colon", "-leading", "ü"])
def test_unsafe_session_ids_are_422(client: httpx.Client, session: str) -> None:
    response = client.post(
        f"/api/conversations/{session}/messages", json={"role": "user", "content": "hi"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "session_id"]
    assert client.get("/history", params={"session_id": session}).status_code == 422
    assert client.post("/run", json={"user_input": "hi", "session_id": session}).status_code == 422


def test_run_without_input_is_422(client: httpx.Client) -> None:
    response = client.post("/run", json={"session_id": "abc"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "user_input"]


def test_saving_the_same_message_key_twice_stores_it_once(stack_env: dict[str, str]) -> None:
    async def save_twice() -> int:
        engine = make_unpooled_engine(stack_env["DATABASE_URL"])
        key, session_id = f"task-{uuid.uuid4()}", new_session()
        try:
            for _ in range(2):  # a redelivered save
                async with engine.begin() as conn:
                    await conversations.save_message(
                        conn,
                        message_key=key,
                        session_id=session_id,
                        role="user",
                        content="once",
                        created_at=datetime.now(UTC),
                    )
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(bind=engine) as s:
                return len(await conversations.history(s, session_id=session_id))
        finally:
            await engine.dispose()

    assert asyncio.run(save_twice()) == 1


def test_init_database_is_safe_to_run_twice(
    client: httpx.Client, start_worker: StartWorker
) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(Config("alembic.ini")).get_current_head()
    start_worker()
    for _ in range(2):
        task = submit(client, "system.init_database")
        assert task["queue"] == "database"
        assert wait_state(client, task["task_id"], "SUCCESS")["result"] == {"revision": head}


# -- paging and the result size limit ------------------------------------------------


def store_directly(
    database_url: str, session_id: str, messages: list[tuple[datetime, str]]
) -> None:
    """Store messages as saves would, in the order given (ids follow that order, not the
    messages' times): many at once without a task each, and with times a test chooses."""

    async def store() -> None:
        engine = make_unpooled_engine(database_url)
        try:
            async with engine.begin() as conn:
                for at, content in messages:
                    await conversations.save_message(
                        conn,
                        message_key=f"direct-{uuid.uuid4()}",
                        session_id=session_id,
                        role="user",
                        content=content,
                        created_at=at,
                    )
        finally:
            await engine.dispose()

    asyncio.run(store())


def stored_directly(database_url: str, session_id: str) -> list[Any]:
    async def load() -> list[Any]:
        from sqlalchemy.ext.asyncio import AsyncSession

        engine = make_unpooled_engine(database_url)
        try:
            async with AsyncSession(bind=engine) as s:
                return list(await conversations.history(s, session_id=session_id))
        finally:
            await engine.dispose()

    return asyncio.run(load())


def read_page(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params={"wait": 10, **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def read_all(
    client: httpx.Client, session: str, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every message of the session, a page at a time: (the messages, the pages)."""
    pages = [read_page(client, f"/api/conversations/{session}", limit=limit)]
    while pages[-1]["has_more"]:
        after = pages[-1]["next"]
        pages.append(read_page(client, f"/api/conversations/{session}", limit=limit, after=after))
        assert len(pages) < 1000, "paging does not end"
    return [m for p in pages for m in p["messages"]], pages


def test_paging_through_a_long_history_returns_every_message_once_in_order(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    start_worker()
    session = new_session()
    start = datetime(2020, 1, 1, tzinfo=UTC)
    # 250 messages, three to a timestamp (so the cursor must tell equal times apart by id),
    # stored in shuffled order (so ids do not follow the times).
    history = [(start + timedelta(seconds=i // 3), f"message {i:03}") for i in range(250)]
    shuffled = random.Random(13).sample(history, len(history))
    store_directly(stack_env["DATABASE_URL"], session, shuffled)
    # Equal times come back in id order, that is in the order they were stored.
    by_time: dict[datetime, list[str]] = {}
    for at, content in shuffled:
        by_time.setdefault(at, []).append(content)
    expected = [c for at in sorted(by_time) for c in by_time[at]]

    messages, pages = read_all(client, session, limit=40)

    assert [m["content"] for m in messages] == expected
    assert [len(p["messages"]) for p in pages] == [40] * 6 + [10]
    assert [p["has_more"] for p in pages] == [True] * 6 + [False]
    # Without a limit the page is the largest one, so a client that predates paging still
    # reads a history of this length whole; the legacy path pages the same way.
    first = read_page(client, f"/api/conversations/{session}")
    assert [m["content"] for m in first["messages"]] == expected
    assert first["has_more"] is False
    legacy = read_page(client, "/history", session_id=session, limit=40, after=pages[0]["next"])
    assert legacy == pages[1]

    # The last page's cursor waits at the end: nothing more now, then what arrives later.
    end = read_page(client, f"/api/conversations/{session}", after=pages[-1]["next"])
    assert end == {"session_id": session, "messages": [], "next": pages[-1]["next"],
                   "has_more": False}  # fmt: skip
    wait_state(client, save(client, session, "a later message"), "SUCCESS")
    later = read_page(client, f"/api/conversations/{session}", after=pages[-1]["next"])
    assert [m["content"] for m in later["messages"]] == ["a later message"]
    assert later["has_more"] is False and later["next"] != pages[-1]["next"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "x"}, "limit"),
     ({"after": "not-a-cursor"}, "after"), ({"after": "1-2-3"}, "after"),
     ({"after": "1" * 18 + "-1"}, "after")],
)  # fmt: skip
def test_bad_page_parameters_are_422_naming_the_field(
    client: httpx.Client, params: dict[str, Any], field: str
) -> None:
    for path, extra in ((f"/api/conversations/{new_session()}", {}),
                        ("/history", {"session_id": new_session()})):  # fmt: skip
        response = client.get(path, params={**params, **extra})
        assert response.status_code == 422, response.text
        assert [d["loc"] for d in response.json()["detail"]] == [["query", field]]


SMALL_RESULTS = {"MAX_RESULT_BYTES": "4096"}


def test_pages_of_long_messages_stay_within_the_result_limit(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    start_worker(env=SMALL_RESULTS)
    session = new_session()
    start = datetime(2020, 1, 1, tzinfo=UTC)
    # About 1 KB and 3 KB as JSON ("é" is written \u00e9): a few to a page of 4096 bytes.
    texts = [f"{i:02} " + ("é" * 500 if i % 2 else "a" * 1000) for i in range(30)]
    store_directly(
        stack_env["DATABASE_URL"],
        session,
        [(start + timedelta(milliseconds=i), t) for i, t in enumerate(texts)],
    )

    messages, pages = read_all(client, session, limit=1000)

    assert [m["content"] for m in messages] == texts
    assert len(pages) > 5
    assert all(p["messages"] for p in pages)
    assert max(len(json.dumps(p)) for p in pages) <= 4096


def test_a_result_over_the_limit_fails_its_task_and_is_not_stored(
    client: httpx.Client, start_worker: StartWorker, stack_env: dict[str, str]
) -> None:
    start_worker(env=SMALL_RESULTS)
    session = new_session()

    # An atomic task (the save echoes the message): FAILURE, and rolled back whole.
    saved = wait_final(client, save(client, session, "x" * 5000))
    assert saved["state"] == "FAILURE"
    assert saved["result"] is None
    assert saved["error"]["type"] == "ResultTooLarge"
    assert "at most 4,096 are stored (MAX_RESULT_BYTES)" in saved["error"]["message"]
    assert read(client, session) == []

    # A read whose one next message alone is over the limit: FAILURE, not a stalled page.
    store_directly(stack_env["DATABASE_URL"], session, [(datetime.now(UTC), "y" * 5000)])
    refused = client.get(f"/api/conversations/{session}", params={"wait": 10})
    assert refused.status_code == 503
    assert "MAX_RESULT_BYTES" in refused.json()["detail"]
    read_task = status(client, failed_task(refused))
    assert (read_task["state"], read_task["error"]["type"]) == ("FAILURE", "ResultTooLarge")

    # A leased task (/run commits the turns as it goes): FAILURE; what it committed stays.
    other = new_session()
    answer = client.post("/run", json={"user_input": "z" * 5000, "session_id": other})
    assert answer.status_code == 503
    turn = status(client, failed_task(answer))
    assert (turn["state"], turn["error"]["type"]) == ("FAILURE", "ResultTooLarge")
    assert turn["result"] is None
    assert [m.role for m in stored_directly(stack_env["DATABASE_URL"], other)] == [
        "user",
        "assistant",
    ]  # (too long for a page under this limit: read here, not through a task)


def failed_task(response: httpx.Response) -> str:
    """The id in a 503's "task <id> ended FAILURE: …"."""
    detail: str = response.json()["detail"]
    assert detail.startswith("task ") and " ended FAILURE: " in detail, detail
    return detail.split()[1]
