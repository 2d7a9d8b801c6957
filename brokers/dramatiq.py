"""The Dramatiq 2.2.1 wire format on RabbitMQ, without importing Dramatiq.

A real `dramatiq` worker must consume what we publish, and both sides must be able to declare the same queues: a
declaration that differs in one argument is a 406 PRECONDITION_FAILED that closes the channel. So the message bytes
and the queue arguments below copy Dramatiq's own (`dramatiq/message.py`, `dramatiq/brokers/rabbitmq.py`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel

from brokers.rabbitmq import QueueDeclaration, declare_queues

#: Dramatiq's default `dramatiq_dead_message_ttl`: dead-lettered messages are kept 7 days.
DEAD_MESSAGE_TTL_MS = 86_400_000 * 7

_QUEUE_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")


def validate_queue_name(queue_name: str) -> str:
    """Dramatiq refuses other names (`dramatiq.actor`), so a message to one could never be consumed."""
    if not _QUEUE_NAME.fullmatch(queue_name):
        raise ValueError(f"invalid Dramatiq queue name {queue_name!r}: must match {_QUEUE_NAME.pattern}")
    return queue_name


def q_name(queue_name: str) -> str:
    """The canonical queue of a queue name (strips `.DQ`/`.XQ`)."""
    return queue_name[:-3] if queue_name.endswith((".DQ", ".XQ")) else queue_name


def dq_name(queue_name: str) -> str:
    """The delay queue: workers hold its messages until their `eta`, then move them to the canonical queue."""
    return q_name(queue_name) + ".DQ"


def xq_name(queue_name: str) -> str:
    """The dead-letter queue: where a worker's `nack(requeue=False)` sends a message after its last retry."""
    return q_name(queue_name) + ".XQ"


def encode_message(
    queue_name: str,
    actor_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    message_id: str | None = None,
    message_timestamp: int | None = None,
) -> bytes:
    """The body Dramatiq's `Message.encode()` produces: `json.dumps` with compact separators (ASCII-escaped, like
    Dramatiq's JSONEncoder, not orjson), keys in dataclass field order, a uuid4 id and an epoch-ms timestamp."""
    validate_queue_name(queue_name)
    data = {
        "queue_name": queue_name,
        "actor_name": actor_name,
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "options": dict(options or {}),
        "message_id": str(uuid.uuid4()) if message_id is None else message_id,
        "message_timestamp": int(time.time() * 1000) if message_timestamp is None else message_timestamp,
    }
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def queue_declarations(
    queue_name: str, *, dead_message_ttl_ms: int = DEAD_MESSAGE_TTL_MS, max_priority: int | None = None
) -> tuple[QueueDeclaration, QueueDeclaration, QueueDeclaration]:
    """The canonical queue, `.DQ` and `.XQ` exactly as `RabbitmqBroker._ensure_queue` declares them.

    `max_priority` and `dead_message_ttl_ms` must equal the worker's `RabbitmqBroker(max_priority=...)` and
    `dramatiq_dead_message_ttl`, or one of the two sides gets a 406.
    """
    if max_priority is not None and not 0 < max_priority <= 255:
        raise ValueError("max_priority must be a value between 0 and 255")
    canonical = validate_queue_name(q_name(queue_name))
    arguments: dict[str, str | int] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(canonical)}
    if max_priority:
        arguments["x-max-priority"] = max_priority
    return (
        QueueDeclaration(canonical, durable=True, arguments=arguments),
        # The delay queue has the canonical queue's arguments, dead-lettering included (Dramatiq does the same).
        QueueDeclaration(dq_name(canonical), durable=True, arguments=arguments),
        # A static TTL: RabbitMQ expires messages head-first, so a per-message TTL would not work.
        QueueDeclaration(xq_name(canonical), durable=True, arguments={"x-message-ttl": dead_message_ttl_ms}),
    )


async def declare_dramatiq_queues(
    channel: AbstractChannel,
    queue_name: str,
    *,
    dead_message_ttl_ms: int = DEAD_MESSAGE_TTL_MS,
    max_priority: int | None = None,
) -> None:
    """Declare a queue's three Dramatiq queues on `channel`, once per connection."""
    await declare_queues(
        channel, queue_declarations(queue_name, dead_message_ttl_ms=dead_message_ttl_ms, max_priority=max_priority)
    )
