"""RabbitMQ publishing on aio-pika: queue declarations cached per connection, and a confirmed batch publisher.

Every call is bounded by a timeout and failures surface as `BrokerUnavailableError` (retry later) or
`BrokerRejectedError` (the broker answered no), so a caller that owns the data (an outbox) can keep it and retry
instead of hanging on a dead broker. Knows nothing of message formats or workflows.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aio_pika
import aiormq
import aiormq.abc
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

log = structlog.get_logger(__name__)

PERSISTENT = 2


class BrokerError(Exception):
    """Base class of the errors a publish can raise; the message was not (reliably) enqueued."""


class BrokerUnavailableError(BrokerError):
    """The broker cannot be reached, the connection broke or a confirm did not arrive in time: retry later."""


class BrokerRejectedError(BrokerError):
    """The broker refused: a nack, an unroutable message, or a queue declared with other arguments (406)."""


@dataclass(frozen=True)
class QueueDeclaration:
    """One `queue.declare`; re-declaring with different arguments is a 406 that closes the channel."""

    name: str
    durable: bool = True
    arguments: Mapping[str, str | int] = field(default_factory=dict)

    def key(self) -> tuple[str, bool, tuple[tuple[str, str | int], ...]]:
        return self.name, self.durable, tuple(sorted(self.arguments.items()))


# What was declared, per underlying AMQP connection: a reconnect is a new aiormq connection, so it declares again
# (the broker may have lost non-mirrored queues in between).
_declared: weakref.WeakKeyDictionary[aiormq.abc.AbstractConnection, set[tuple[object, ...]]] = (
    weakref.WeakKeyDictionary()
)


async def declare_queues(channel: AbstractChannel, declarations: Iterable[QueueDeclaration]) -> None:
    """Declare the queues this connection has not declared yet (plain declares, not restored by aio-pika)."""
    underlay = await channel.get_underlay_channel()
    done = _declared.setdefault(underlay.connection, set())
    for declaration in declarations:
        if declaration.key() in done:
            continue
        await underlay.queue_declare(
            declaration.name, durable=declaration.durable, arguments=dict(declaration.arguments)
        )
        done.add(declaration.key())


async def forget_declared(channel: AbstractChannel, names: Iterable[str]) -> None:
    """Make the next `declare_queues` declare these queues again (e.g. after a message came back unroutable)."""
    underlay = await channel.get_underlay_channel()
    forget = set(names)
    done = _declared.get(underlay.connection, set())
    done.difference_update({key for key in done if key[0] in forget})


Declarations = Callable[[str], Iterable[QueueDeclaration]]


class Publisher:
    """One robust connection, one channel with publisher confirms; `publish_batch` waits for every confirm.

    Messages go to the default exchange with routing key = queue, `mandatory=True`, `delivery_mode=2` and no
    other property (no content_type, no headers: exactly what Dramatiq sends; aiormq adds a random `message_id`
    because it matches returned messages by it). `declarations(queue)` lists the queues to declare before the
    first publish to a queue on a connection. On any connection-level failure the connection is dropped and the
    next call connects again.
    """

    def __init__(
        self,
        url: str,
        *,
        declarations: Declarations | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._declarations = declarations
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish `(queue, body)` pairs and return once the broker confirmed all of them; raise otherwise."""
        if not messages:
            return
        async with self._lock:
            channel = await self._ready_channel()
            try:
                async with asyncio.timeout(self._publish_timeout):
                    await self._publish_confirmed(channel, messages)
            except BrokerRejectedError:
                raise
            except aiormq.exceptions.ChannelClosed as exc:  # 403/404/406...: the broker said no, not "down"
                await self._drop()
                raise BrokerRejectedError(f"channel closed by the broker: {exc}") from exc
            except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
                await self._drop()
                raise BrokerUnavailableError(f"publish to {self._safe_url()} failed: {exc!r}") from exc

    async def close(self) -> None:
        """Close the connection; a later `publish_batch` opens a new one."""
        async with self._lock:
            await self._drop()

    async def _publish_confirmed(self, channel: AbstractChannel, messages: Sequence[tuple[str, bytes]]) -> None:
        pending = list(messages)
        for attempt in (1, 2):
            queues = dict.fromkeys(queue for queue, _ in pending)
            if self._declarations is not None:
                for queue in queues:
                    await declare_queues(channel, self._declarations(queue))
            pending = await self._publish_once(channel, pending)
            if not pending:
                return
            # Unroutable: a queue vanished since we declared it. Declare again and retry just those, as Dramatiq does.
            await forget_declared(channel, {queue for queue, _ in pending})
            log.warning("broker.messages_returned", count=len(pending), attempt=attempt)
        raise BrokerRejectedError(f"{len(pending)} message(s) unroutable: {sorted({q for q, _ in pending})}")

    @staticmethod
    async def _publish_once(channel: AbstractChannel, messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Publish all (pipelined, one confirm each); return the messages the broker returned as unroutable."""
        underlay = await channel.get_underlay_channel()
        results = await asyncio.gather(
            *(
                underlay.basic_publish(
                    body,
                    exchange="",
                    routing_key=queue,
                    # A fresh object per message: aiormq writes the generated message_id into it.
                    properties=aiormq.spec.Basic.Properties(delivery_mode=PERSISTENT),
                    mandatory=True,
                )
                for queue, body in messages
            ),
            return_exceptions=True,
        )
        returned: list[tuple[str, bytes]] = []
        nacked = 0
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, aiormq.exceptions.PublishError):
                returned.append(message)
            elif isinstance(result, aiormq.exceptions.DeliveryError):
                nacked += 1
            elif isinstance(result, BaseException):
                raise result
        if nacked:
            raise BrokerRejectedError(f"{nacked} of {len(messages)} message(s) nacked by the broker")
        return returned

    async def _ready_channel(self) -> AbstractChannel:
        if self._connection is not None and self._channel is not None and not self._channel.is_closed:
            try:
                # A robust connection may be reconnecting in the background: wait a bounded time for it.
                async with asyncio.timeout(self._connect_timeout):
                    await self._connection.ready()
                return self._channel
            except TimeoutError as exc:
                await self._drop()
                raise BrokerUnavailableError(f"{self._safe_url()} is reconnecting") from exc
        await self._drop()
        connection = aio_pika.RobustConnection(make_url(self._url))
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.connect(timeout=self._connect_timeout)
                channel = connection.channel(publisher_confirms=True, on_return_raises=True)
                await channel.initialize(timeout=self._connect_timeout)
        except BaseException as exc:
            await _close_quietly(connection)
            if isinstance(exc, (TimeoutError, *CONNECTION_EXCEPTIONS)):
                raise BrokerUnavailableError(f"cannot connect to {self._safe_url()}: {exc!r}") from exc
            raise
        self._connection, self._channel = connection, channel
        log.info("broker.connected", url=self._safe_url())
        return channel

    async def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await _close_quietly(connection)

    def _safe_url(self) -> str:
        return str(make_url(self._url).with_password(None))


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    try:
        async with asyncio.timeout(5.0):
            await connection.close()
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        log.debug("broker.close_failed", error=repr(exc))
