"""A Celery task message as kombu's Redis transport stores it, so the API can LPUSH it itself.

kombu publishes with a sync Redis client, so an async API has to hand every publish to a
thread; with the envelope kombu wraps around the message, that was the largest share of
the API's time per submission (py-spy under wrk: 20 % of its samples in the publisher
threads, 5 % more creating a Redis client object per publish). Here the message is built
by Celery's own builder and serialized by kombu's own serializer; only the envelope the
transport adds (``Channel.prepare_message`` and ``basic_publish``) is written out, and
tests/test_messages.py checks it against what kombu itself pushes. Then one async
pipeline carries the LPUSH and the events XADD in a single round trip, on the loop.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
from celery import Celery
from kombu.serialization import dumps as serialize

# The persistent delivery mode kombu gives a Celery message (AMQP's 2).
PERSISTENT = 2
# Celery's own limit on argsrepr/kwargsrepr (Task.kwargsrepr_maxsize).
REPR_MAX = 1024


def celery_priority(priority: int) -> int:
    """API priorities are 0-9 with 9 the most urgent; kombu's Redis transport serves 0 first."""
    return 9 - max(0, min(9, priority))


def queue_key(celery: Celery, queue: str, priority: int) -> str:
    """The Redis list a message of ``priority`` (kombu's, 0 first) waits in: kombu keeps one
    list per priority step, and the step-0 list is the queue's own name."""
    options = celery.conf.broker_transport_options
    steps: list[int] = options["priority_steps"]
    step = max(s for s in steps if s <= priority)
    return f"{queue}{options['sep']}{step}" if step else queue


def task_payload(
    celery: Celery,
    *,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    queue: str,
    priority: int,
    keep_result: bool = False,
) -> tuple[str, bytes]:
    """(Redis list key, message) for task ``name`` with API ``priority`` 0-9.

    ``keep_result``: the worker stores the return value in the result backend. Only a bare
    round trip wants that; the ledger holds every other result. (The message's own
    ``ignore_result`` header overrides the task's setting, and Celery's builder writes
    False unless told.)
    """
    headers, properties, body, _ = celery.amqp.create_task_message(
        task_id,
        name,
        (),
        kwargs,
        ignore_result=not keep_result,
        argsrepr="()",
        kwargsrepr=_short_repr(kwargs),
    )
    content_type, content_encoding, raw = serialize(body, serializer=celery.conf.task_serializer)  # type: ignore[no-untyped-call]
    pri = celery_priority(priority)
    envelope = {
        "body": base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            **properties,
            "delivery_mode": PERSISTENT,
            # The anonymous exchange: the routing key names the queue, as Celery sends to
            # a direct queue.
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": pri,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    # The envelope holds only JSON types (the body is already text): orjson, 15x faster
    # than kombu's encoder here.
    return queue_key(celery, queue, pri), orjson.dumps(envelope)


def _short_repr(kwargs: dict[str, Any]) -> str:
    """What Flower shows of the arguments. Celery's ``saferepr`` was two thirds of building a
    message (50 µs of 80); ``repr`` cut to Celery's length limit shows the same."""
    text = repr(kwargs)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."
