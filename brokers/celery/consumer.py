"""Consume Celery task messages from RabbitMQ and answer like Celery's rpc:// result backend.

Delivery policy (at-least-once; the handler must tolerate a redelivery):

* a delivery that is not a runnable Celery task (undecodable, unknown name) is copied with its original bytes to
  the dead-letter queue (publisher confirms) and only then acked, so nothing is lost and nothing spins;
* a known task is acked only after the handler returns (the handler publishes with confirms itself); a failing
  handler is requeued after a growing delay, and dead-lettered (with a FAILURE reply) after `max_attempts`;
* a handler that raises `MessageRejected` refuses the task for good (bad arguments, no such process): it is
  dead-lettered at once, without retries, and the FAILURE reply carries the exception's `__cause__` if it has one;
* an `eta` in the future holds the delivery unacked with the channel prefetch raised by one, as Celery's worker
  does; holds longer than `max_hold_seconds` are re-published and acked, to stay under RabbitMQ's
  `consumer_timeout` (30 min by default), which would otherwise close the channel.
"""

from __future__ import annotations

import asyncio
import traceback as tb
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    HeadersType,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from brokers.celery.protocol import (
    JSON_CONTENT_TYPE,
    CeleryTask,
    MessageRejected,
    decode_task,
    exception_result,
    failure_result,
    not_registered_result,
    revoked_result,
    success_result,
)
from brokers.celery.topology import DEFAULT_DEAD_LETTER_QUEUE, declare_celery_queues, declare_dead_letter_queue

__all__ = ["CeleryConsumer", "Handler"]

Handler = Callable[[CeleryTask], Awaitable[None]]

_MAX_PREFETCH: Final = 65_535
_MAX_REASON: Final = 1_000
_MAX_TRACKED_ATTEMPTS: Final = 10_000
_MAX_RETRY_DELAY: Final = 30.0

logger = structlog.get_logger("brokers.celery")


class _ChannelGoneError(Exception):
    """The delivery's channel closed (reconnect or shutdown); the broker has already requeued it."""


class CeleryConsumer:
    """Consume `queues` on one robust connection and hand each decoded task with a known name to `handler`.

    `prefetch` bounds the deliveries in flight across all queues (channel-global QoS, as Celery uses on RabbitMQ),
    so it is also the handler concurrency.
    """

    def __init__(
        self,
        url: str,
        queues: Sequence[str],
        task_names: Collection[str],
        handler: Handler,
        *,
        dead_letter_queue: str = DEFAULT_DEAD_LETTER_QUEUE,
        prefetch: int = 16,
        shutdown_timeout: float = 30.0,
        max_hold_seconds: float = 600.0,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        connection_name: str = "orchestrator-celery-consumer",
    ) -> None:
        if not queues:
            raise ValueError("CeleryConsumer needs at least one queue")
        if dead_letter_queue in queues:
            raise ValueError(f"the dead-letter queue {dead_letter_queue!r} cannot also be a consumed queue")
        if not 1 <= prefetch <= _MAX_PREFETCH:
            raise ValueError(f"prefetch must be between 1 and {_MAX_PREFETCH}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_hold_seconds <= 0:
            raise ValueError("max_hold_seconds must be positive")
        self.url = url
        self.queues = tuple(dict.fromkeys(queues))
        self.task_names = frozenset(task_names)
        self.handler = handler
        self.dead_letter_queue = dead_letter_queue
        self.prefetch = prefetch
        self.shutdown_timeout = shutdown_timeout
        self.max_hold_seconds = max_hold_seconds
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.connection_name = connection_name

        self._connection: AbstractRobustConnection | None = None
        self._consume_channel: AbstractChannel | None = None
        self._publish_channel: AbstractChannel | None = None
        self._consumers: dict[str, tuple[AbstractQueue, str]] = {}
        self._queue_by_tag: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()  # sleeping (eta hold, retry back-off): stop() cancels them
        self._held = 0
        self._qos_lock = asyncio.Lock()
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._closing = False

    # ----------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, declare the queues the way kombu does, and start consuming."""
        if self._connection is not None:
            raise RuntimeError("CeleryConsumer already started")
        self._closing = False
        self._connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": self.connection_name}
        )
        try:
            self._publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._consume_channel = await self._connection.channel(publisher_confirms=False)
            await self._consume_channel.set_qos(prefetch_count=self.prefetch, global_=True)
            await declare_dead_letter_queue(self._publish_channel, self.dead_letter_queue)
            declared = await declare_celery_queues(self._consume_channel, self.queues)
            for name, queue in declared.items():
                tag = await queue.consume(self._on_message, no_ack=False)
                self._consumers[name] = (queue, tag)
                self._queue_by_tag[tag] = name
        except BaseException:
            await self._close_connection()
            raise
        logger.info("celery consumer started", queues=list(self.queues), prefetch=self.prefetch)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop consuming, let running handlers finish (up to `timeout`), then close.

        Deliveries not acked by then (held etas, handlers cut short) are requeued by the broker on close.
        """
        if self._connection is None:
            return
        self._closing = True
        timeout = self.shutdown_timeout if timeout is None else timeout
        for queue, tag in self._consumers.values():
            try:
                await queue.cancel(tag)
            except (AMQPError, RuntimeError, ConnectionError):
                logger.warning("celery consumer cancel failed", queue=queue.name, exc_info=True)
        self._consumers.clear()
        for task in self._waiting:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("celery handlers cut short at shutdown", count=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self._close_connection()
        logger.info("celery consumer stopped", queues=list(self.queues))

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._consume_channel = self._publish_channel = None
        self._queue_by_tag.clear()
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def held(self) -> int:
        """Deliveries held unacked until their eta."""
        return self._held

    # ----------------------------------------------------------------------------------------------- replies

    async def reply(self, task: CeleryTask, body: bytes) -> bool:
        """Publish an rpc:// result body to the client's reply queue; False when the client wants none."""
        if not task.wants_reply or task.reply_to is None:
            return False
        message = aio_pika.Message(
            body,
            content_type=JSON_CONTENT_TYPE,
            content_encoding="utf-8",
            correlation_id=task.reply_correlation_id,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            priority=0,
            headers={},
        )
        # Not mandatory: a client that went away leaves no reply queue, and the default exchange drops it.
        await self._publisher().default_exchange.publish(message, routing_key=task.reply_to, mandatory=False)
        return True

    async def reply_success(self, task: CeleryTask, result: Any) -> bool:
        return await self.reply(task, success_result(task.id, result))

    async def reply_failure(
        self,
        task: CeleryTask,
        exc_type: str,
        exc_message: Sequence[Any],
        exc_module: str = "builtins",
        traceback: str | None = None,
    ) -> bool:
        return await self.reply(task, failure_result(task.id, exc_type, exc_message, exc_module, traceback))

    async def reply_exception(self, task: CeleryTask, exc: BaseException) -> bool:
        """A FAILURE reply that the client re-raises as `exc` (or a class of the same name)."""
        text = "".join(tb.format_exception(exc))
        return await self.reply(task, exception_result(task.id, exc, text))

    def _publisher(self) -> AbstractChannel:
        if self._publish_channel is None:
            raise RuntimeError("CeleryConsumer is not started")
        return self._publish_channel

    # ----------------------------------------------------------------------------------------------- deliveries

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closing:
            with suppress(_ChannelGoneError):
                await self._settle(message, requeue=True)
            return
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._dispatch(message)
        except _ChannelGoneError:
            logger.warning("celery delivery dropped with its channel; the broker redelivers it", **self._ids(message))
        except asyncio.CancelledError:
            raise  # shutdown: the delivery stays unacked and is requeued when the channel closes
        except Exception:
            # Dead-lettering or replying failed (broker trouble): retry later rather than lose the message.
            logger.exception("celery delivery failed; requeued", **self._ids(message))
            await self._sleep(self.retry_delay)
            with suppress(_ChannelGoneError):
                await self._settle(message, requeue=True)

    async def _dispatch(self, message: AbstractIncomingMessage) -> None:
        try:
            task = decode_task(
                message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=message.headers,
                reply_to=message.reply_to,
                correlation_id=message.correlation_id,
            )
        except MessageRejected as exc:
            await self._dead_letter(message, exc.reason)
            await self._settle(message)
            logger.warning("celery message dead-lettered", **self._ids(message, exc.task_id), reason=exc.reason)
            return

        if task.name not in self.task_names:
            reason = f"unregistered task {task.name!r}"
            await self._dead_letter(message, reason)
            await self.reply(task, not_registered_result(task.id, task.name))
            await self._settle(message)
            logger.warning("celery message dead-lettered", **self._ids(message, task.id), task=task.name, reason=reason)
            return

        if not await self._wait_for_eta(message, task):
            return
        await self._run(message, task)

    async def _wait_for_eta(self, message: AbstractIncomingMessage, task: CeleryTask) -> bool:
        """Hold the delivery until its eta; False when it was settled here (expired or re-published)."""
        while True:
            if _expired(task):
                await self.reply(task, revoked_result(task.id))
                await self._settle(message)
                logger.info("celery task expired", **self._ids(message, task.id), task=task.name)
                return False
            remaining = (task.eta - _now()).total_seconds() if task.eta is not None else 0.0
            if remaining <= 0:
                return True
            async with self._holding_slot():
                await self._sleep(min(remaining, self.max_hold_seconds))
            if not _channel_open(message):  # reconnected meanwhile: the broker redelivers it
                raise _ChannelGoneError
            if remaining > self.max_hold_seconds and not _expired(task):
                await self._republish(message, task)
                await self._settle(message)
                logger.info("celery task re-queued until its eta", **self._ids(message, task.id), eta=str(task.eta))
                return False

    async def _run(self, message: AbstractIncomingMessage, task: CeleryTask) -> None:
        try:
            await self.handler(task)
        except MessageRejected as exc:
            await self._refuse(message, task, exc)
            return
        except Exception as exc:
            attempts = self._count_attempt(task.id)
            if attempts < self.max_attempts:
                delay = min(self.retry_delay * attempts, _MAX_RETRY_DELAY)
                logger.warning(
                    "celery handler failed; requeued",
                    **self._ids(message, task.id),
                    task=task.name,
                    attempt=attempts,
                    retry_in=delay,
                    exc_info=True,
                )
                await self._sleep(delay)
                await self._settle(message, requeue=True)
                return
            self._attempts.pop(task.id, None)
            reason = f"handler failed {attempts} times: {type(exc).__name__}: {exc}"
            await self._dead_letter(message, reason)
            await self.reply_exception(task, exc)
            await self._settle(message)
            logger.error(
                "celery message dead-lettered",
                **self._ids(message, task.id),
                task=task.name,
                reason=reason,
                exc_info=True,
            )
            return
        self._attempts.pop(task.id, None)
        await self._settle(message)
        logger.debug("celery task handled", **self._ids(message, task.id), task=task.name)

    async def _refuse(self, message: AbstractIncomingMessage, task: CeleryTask, exc: MessageRejected) -> None:
        """The handler says the task can never run: retrying would only delay the client's FAILURE."""
        self._attempts.pop(task.id, None)
        await self._dead_letter(message, exc.reason)
        cause = exc.__cause__
        await self.reply_exception(task, cause if isinstance(cause, Exception) else exc)
        await self._settle(message)
        logger.warning("celery message dead-lettered", **self._ids(message, task.id), task=task.name, reason=exc.reason)

    def _count_attempt(self, task_id: str) -> int:
        attempts = self._attempts.pop(task_id, 0) + 1
        self._attempts[task_id] = attempts
        while len(self._attempts) > _MAX_TRACKED_ATTEMPTS:
            self._attempts.popitem(last=False)
        return attempts

    def _ids(self, message: AbstractIncomingMessage, task_id: str | None = None) -> dict[str, Any]:
        """Log fields naming the delivery: the Celery task id when known, else whatever id the message carries."""
        header_id = (message.headers or {}).get("id")
        message_id = task_id or (header_id if isinstance(header_id, str) else None)
        message_id = message_id or message.correlation_id or message.message_id
        return {
            "message_id": message_id or f"delivery-tag:{message.delivery_tag}",
            "queue": self._queue_by_tag.get(message.consumer_tag or "", message.routing_key),
            "redelivered": message.redelivered,
        }

    async def _settle(self, message: AbstractIncomingMessage, *, requeue: bool | None = None) -> None:
        """Ack (requeue None) or nack; a closed channel means the broker already requeued the delivery."""
        try:
            if requeue is None:
                await message.ack()
            else:
                await message.nack(requeue=requeue)
        except AMQPError as exc:
            raise _ChannelGoneError from exc

    # ----------------------------------------------------------------------------------------------- holding

    @asynccontextmanager
    async def _holding_slot(self) -> AsyncIterator[None]:
        """Raise the channel prefetch by one while a delivery waits, so that held etas do not starve the rest."""
        await self._adjust_prefetch(+1)
        try:
            yield
        finally:
            if self._closing:
                self._held -= 1
            else:
                await self._adjust_prefetch(-1)

    async def _sleep(self, seconds: float) -> None:
        """A wait that stop() may cut short: the delivery is unacked, so closing the channel requeues it."""
        if self._closing:
            raise asyncio.CancelledError
        current = asyncio.current_task()
        if current is not None:
            self._waiting.add(current)
        try:
            await asyncio.sleep(seconds)
        finally:
            if current is not None:
                self._waiting.discard(current)

    async def _adjust_prefetch(self, delta: int) -> None:
        async with self._qos_lock:
            self._held += delta
            channel = self._consume_channel
            if channel is None or channel.is_closed:
                return
            try:
                await channel.set_qos(prefetch_count=min(self.prefetch + self._held, _MAX_PREFETCH), global_=True)
            except AMQPError:
                logger.warning("celery prefetch change failed", held=self._held, exc_info=True)

    # ----------------------------------------------------------------------------------------------- copies

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Copy the original body and properties to the dead-letter queue, confirmed, before the caller acks.

        The copy is persistent and carries no `expiration` (the per-message TTL would otherwise delete it from
        the dead-letter queue); the original exchange, routing key, expiration and user id go into headers.
        """
        headers: HeadersType = dict(message.headers or {})
        headers["x-rejected-reason"] = reason[:_MAX_REASON]
        headers["x-original-exchange"] = message.exchange or ""
        headers["x-original-routing-key"] = message.routing_key or ""
        if isinstance(message.expiration, int | float):  # aio-pika decodes the ms string to seconds
            headers["x-original-expiration"] = str(round(message.expiration * 1000))
        if message.user_id is not None:
            headers["x-original-user-id"] = message.user_id  # the broker refuses a foreign user_id property
        copy = _copy(message, headers=headers, expiration=None)
        await self._publisher().default_exchange.publish(copy, routing_key=self.dead_letter_queue, mandatory=True)

    async def _republish(self, message: AbstractIncomingMessage, task: CeleryTask) -> None:
        queue = self._queue_by_tag.get(message.consumer_tag or "") or message.routing_key or ""
        expiration = (task.expires - _now()).total_seconds() if task.expires is not None else None
        headers: HeadersType = dict(message.headers or {})
        copy = _copy(message, headers=headers, expiration=max(expiration, 0.001) if expiration is not None else None)
        await self._publisher().default_exchange.publish(copy, routing_key=queue, mandatory=True)


def _copy(message: AbstractIncomingMessage, *, headers: HeadersType, expiration: float | None) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _expired(task: CeleryTask) -> bool:
    return task.expires is not None and task.expires <= _now()


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False
