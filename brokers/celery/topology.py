"""RabbitMQ objects for the Celery side, declared exactly as kombu declares them.

Celery clients declare their queues before every first publish; if ours differ in any argument, RabbitMQ closes
their channel with 406 PRECONDITION_FAILED. Hence: durable, no arguments, plus the same-named direct exchange.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue

__all__ = [
    "DEFAULT_DEAD_LETTER_QUEUE",
    "QueueCollisionError",
    "check_queue_collisions",
    "declare_celery_queue",
    "declare_celery_queues",
    "declare_dead_letter_queue",
    "same_vhost",
    "validate_queue_name",
]

DEFAULT_DEAD_LETTER_QUEUE: Final = "orchestrator.celery.dead"
DRAMATIQ_SUFFIXES: Final = (".DQ", ".XQ")
_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9._-]*$")


class QueueCollisionError(ValueError):
    """Celery and Dramatiq would share a queue; each consumer would destroy the other's messages."""


def validate_queue_name(name: str) -> str:
    """Refuse names RabbitMQ reserves (`amq.*`) and names Dramatiq could not use either."""
    if not _NAME.match(name) or len(name.encode()) > 255:
        raise ValueError(f"invalid queue name {name!r}: must match {_NAME.pattern} and be at most 255 bytes")
    if name.startswith("amq."):
        raise ValueError(f"invalid queue name {name!r}: the 'amq.' prefix is reserved by RabbitMQ")
    return name


async def declare_celery_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """Queue + same-named direct exchange + binding, matching `kombu.Queue(name)` on a default Celery app."""
    validate_queue_name(name)
    queue = await channel.declare_queue(name, durable=True, exclusive=False, auto_delete=False, arguments=None)
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True, auto_delete=False)
    await queue.bind(exchange, routing_key=name)
    return queue


async def declare_celery_queues(channel: AbstractChannel, names: Iterable[str]) -> dict[str, AbstractQueue]:
    return {name: await declare_celery_queue(channel, name) for name in dict.fromkeys(names)}


async def declare_dead_letter_queue(channel: AbstractChannel, name: str = DEFAULT_DEAD_LETTER_QUEUE) -> AbstractQueue:
    """A plain durable queue that keeps refused deliveries for an operator; nothing consumes it."""
    validate_queue_name(name)
    if name.lower().startswith("celery"):
        raise ValueError(f"dead-letter queue {name!r}: 'celery*' names are reserved for Celery itself")
    return await channel.declare_queue(name, durable=True, exclusive=False, auto_delete=False, arguments=None)


def check_queue_collisions(celery_queues: Iterable[str], other_queues: Iterable[str], same_broker: bool) -> None:
    """Fail at start-up, naming the queues, if a Celery queue would also be a Dramatiq queue on the same vhost.

    Dramatiq declares `q`, `q.DQ` and `q.XQ` with dead-letter arguments, Celery declares `q` without: whichever
    comes second gets a 406, and with matching arguments each consumer would drop the other's messages.
    """
    if not same_broker:
        return
    taken: dict[str, str] = {}
    for queue in other_queues:
        taken.setdefault(queue, queue)
        for suffix in DRAMATIQ_SUFFIXES:
            taken.setdefault(queue + suffix, queue)
    collisions = sorted({name for name in celery_queues if name in taken})
    if not collisions:
        return
    described = ", ".join(
        repr(name) if taken[name] == name else f"{name!r} (derived from Dramatiq queue {taken[name]!r})"
        for name in collisions
    )
    raise QueueCollisionError(
        f"Celery queue name(s) {described} are also used by Dramatiq on the same broker/vhost. "
        "Give the Celery side another vhost/broker URL via CELERY_BROKER_URL, "
        "or rename the Dramatiq queues via TASKS_QUEUE/WORKFLOWS_QUEUE."
    )


def _vhost_key(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme.lower() == "amqps" else 5672
    path = unquote(parts.path)
    vhost = "/" if path in ("", "/") else path[1:]  # aiormq's reading: empty path and "/" both mean vhost "/"
    return (parts.hostname or "localhost").lower(), parts.port or default_port, vhost


def same_vhost(url_a: str, url_b: str) -> bool:
    """Whether two AMQP URLs reach the same vhost; credentials and query options do not matter."""
    return _vhost_key(url_a) == _vhost_key(url_b)
