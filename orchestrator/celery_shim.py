"""`orchestrator celery-shim`: orchestrator-core's Celery messages in, our Dramatiq messages out.

Producers we do not control (an orchestrator-core API or scheduler sharing our database) write a process and
publish `tasks.new_*` / `tasks.resume_*` with `(process_id, user)`. For each message the shim checks that the
process exists, publishes the equivalent Dramatiq message to the queue our workers consume (publisher confirms),
and only then lets the consumer ack the Celery message. A crash in between redelivers it; that is harmless,
because a worker only claims a `created` (new) or `resumed` (resume) process.

Replies: a client that asks for a result (orchestrator-core's TESTING mode blocks on `AsyncResult.get()`) gets
SUCCESS with the process id once the run ends, as orchestrator-core's worker returns it. Run ends are learnt from
LISTEN on the events channel and confirmed in the database (a notification only says "look"); a periodic
re-check covers notifications missed while the LISTEN connection was down. Pending replies live in memory: if
the shim restarts they are lost (the processes still run; only a waiting client times out).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import suppress
from types import TracebackType
from typing import Final, NoReturn, Self
from uuid import UUID

import structlog
import uvloop
from aio_pika.exceptions import AMQPError

from brokers.celery import (
    DEFAULT_DEAD_LETTER_QUEUE,
    CeleryConsumer,
    CeleryTask,
    MessageRejected,
    QueueCollisionError,
    check_queue_collisions,
    same_vhost,
    validate_queue_name,
)
from brokers.dramatiq import encode_message, queue_declarations
from brokers.rabbitmq import Publisher
from orchestrator.dsl.types import RUN_ENDED_STATUSES
from orchestrator.persistence import database
from orchestrator.persistence.events import EVENTS_CHANNEL
from orchestrator.persistence.listener import Listener
from orchestrator.persistence.store import Store
from orchestrator.settings import AppSettings

__all__ = ["TASK_NAMES", "CeleryShim", "check_layout", "process_call", "run_shim"]

logger = structlog.get_logger(__name__)

TASK_NAMES: Final = {
    "tasks.new_task": True,
    "tasks.new_workflow": False,
    "tasks.resume_task": True,
    "tasks.resume_workflow": False,
}
"""orchestrator-core's four Celery task names (unchanged since 1.0), and whether each is for a task."""

#: A failing publish or query is retried this often (growing back-off, about 45 s in all) before dead-lettering.
MAX_ATTEMPTS: Final = 10


def process_call(task: CeleryTask) -> tuple[UUID, str]:
    """`(process_id, user)` from every argument shape orchestrator-core has sent.

    `(pid, user)`, `(pid, workflow_key, user)`, `(pid, workflow_key, state, user)`, `(pid, user_inputs, user)`,
    keywords, or a mix: the process id is the first argument, the user the last. Anything else is refused for
    good (`MessageRejected`), so it is dead-lettered instead of retried.
    """
    args, kwargs = task.args, task.kwargs
    if args and "process_id" in kwargs:
        _refuse(task, TypeError(f"{task.name} got multiple values for argument 'process_id'"))
    raw_pid = args[0] if args else kwargs.get("process_id")
    raw_user = kwargs["user"] if "user" in kwargs else (args[-1] if len(args) >= 2 else None)
    if raw_pid is None or raw_user is None:
        _refuse(task, TypeError(f"{task.name} needs (process_id, ..., user); got {len(args)} argument(s)"))
    if not isinstance(raw_user, str):
        _refuse(task, TypeError(f"user must be a string, got {type(raw_user).__name__}"))
    try:
        pid = UUID(str(raw_pid))
    except ValueError:
        _refuse(task, ValueError(f"badly formed process id {raw_pid!r}"))
    return pid, raw_user


def _refuse(task: CeleryTask, cause: Exception) -> NoReturn:
    """Dead-letter the task without retries; `cause` is what the client's `AsyncResult.get()` raises."""
    raise MessageRejected(str(cause), task_id=task.id) from cause


def check_layout(settings: AppSettings, dead_letter_queue: str = DEFAULT_DEAD_LETTER_QUEUE) -> None:
    """Refuse, before connecting, a Celery queue layout that cannot work (raises ValueError with the fix).

    Celery clients declare their queues without arguments and Dramatiq declares its own with dead-letter
    arguments, so one name used by both on one vhost is a 406 for one side, or each consumer eating the other's
    messages (`QueueCollisionError` names the queues and the way out).
    """
    if not settings.CELERY_QUEUES:
        raise ValueError("CELERY_QUEUES is empty: list the queues the Celery producers publish to")
    if dead_letter_queue in settings.CELERY_QUEUES:
        raise ValueError(f"CELERY_QUEUES must not contain the shim's dead-letter queue {dead_letter_queue!r}")
    celery_side = [validate_queue_name(name) for name in (*settings.CELERY_QUEUES, dead_letter_queue)]
    ours = [settings.TASKS_QUEUE, settings.WORKFLOWS_QUEUE, *settings.TARGET_QUEUES.values()]
    celery_url = settings.CELERY_BROKER_URL or settings.BROKER_URL
    try:
        check_queue_collisions(celery_side, ours, same_vhost(celery_url, settings.BROKER_URL))
    except QueueCollisionError as exc:
        raise QueueCollisionError(
            f"{exc} To leave the producers unchanged, keep CELERY_BROKER_URL where they publish and move our side: "
            "BROKER_URL on another vhost, or other TASKS_QUEUE/WORKFLOWS_QUEUE/TARGET_QUEUES names."
        ) from None


class _Batches:
    """Publish what concurrent handlers hand in as one confirmed batch: a confirm waits for the broker's disk
    sync, so one confirm per message would cap the shim at a few hundred messages per second."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._waiting: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def publish(self, queue: str, body: bytes) -> None:
        """Return once the broker confirmed the message; raise what the batch's publish raised."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((queue, body, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="celery-shim-publish")
        await done

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self.publisher.publish_batch([(queue, body) for queue, body, _ in batch])
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)


class CeleryShim:
    """Consume `CELERY_QUEUES` from `CELERY_BROKER_URL` (default `BROKER_URL`) and dispatch to our workers.

    `pool` is the database the producers write to. Dispatch follows the task name, never the queue: any queue may
    carry any of the four names, and a task's Dramatiq queue is `settings.queue_for(...)` of the process's target.
    """

    def __init__(
        self,
        settings: AppSettings,
        pool: database.Pool,
        *,
        dead_letter_queue: str = DEFAULT_DEAD_LETTER_QUEUE,
        recheck_interval: float = 2.0,
    ) -> None:
        check_layout(settings, dead_letter_queue)
        self.settings = settings
        self.store = Store(pool)
        self.recheck_interval = recheck_interval
        self.consumer = CeleryConsumer(
            settings.CELERY_BROKER_URL or settings.BROKER_URL,
            settings.CELERY_QUEUES,
            TASK_NAMES,
            self.handle,
            dead_letter_queue=dead_letter_queue,
            prefetch=settings.CELERY_PREFETCH,
            shutdown_timeout=settings.SHUTDOWN_TIMEOUT_SECONDS,
            max_attempts=MAX_ATTEMPTS,
            connection_name="orchestrator-celery-shim",
        )
        self.publisher = Publisher(settings.BROKER_URL, declarations=queue_declarations)
        self._batches = _Batches(self.publisher)
        self.dispatched = 0
        self._pending: dict[UUID, dict[str, CeleryTask]] = {}  # pid -> task id -> a task whose client waits
        self._wake = asyncio.Event()
        # After each (re)connect: re-check, as notifications sent while not listening are gone.
        self._listener = Listener(pool)
        self._background: list[asyncio.Task[None]] = []

    @property
    def pending_replies(self) -> int:
        return sum(len(tasks) for tasks in self._pending.values())

    # ----------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.consumer.start()
        await self._listener.subscribe(EVENTS_CHANNEL, self._on_event, on_listening=self._wake.set)
        self._background = [asyncio.create_task(self._answer_forever(), name="celery-shim-replies")]
        logger.info(
            "celery shim started",
            celery_queues=list(self.consumer.queues),
            tasks_queue=self.settings.TASKS_QUEUE,
            workflows_queue=self.settings.WORKFLOWS_QUEUE,
            target_queues={str(target): queue for target, queue in self.settings.TARGET_QUEUES.items()},
        )

    async def stop(self) -> None:
        """Answer what can be answered, let running handlers finish, close. Replies still pending are lost."""
        await self._cancel_background()
        with suppress(Exception):
            async with asyncio.timeout(self.recheck_interval):
                await self._answer_ended()
        await self.consumer.stop()
        await self.publisher.close()
        if self._pending:
            logger.warning(
                "celery shim stopped with replies pending; those clients get none", count=self.pending_replies
            )
        logger.info("celery shim stopped", dispatched=self.dispatched)

    async def _cancel_background(self) -> None:
        await self._listener.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ----------------------------------------------------------------------------------------------- dispatch

    async def handle(self, task: CeleryTask) -> None:
        """Publish the Dramatiq message equivalent to `task`; returning lets the consumer ack the Celery one."""
        pid, user = process_call(task)
        target = await self.store.target_of(pid)
        if target is None:
            _refuse(task, ValueError(f"Process not found: {pid}"))
        queue = self.settings.queue_for(is_task=TASK_NAMES[task.name], target=target)
        actor = task.name.removeprefix("tasks.")
        if task.wants_reply:
            self._pending.setdefault(pid, {})[task.id] = task  # before publishing: the run may end at once
        try:
            await self._batches.publish(queue, encode_message(queue, actor, [str(pid), user]))
        except BaseException:
            self._forget(pid, task.id)
            raise
        self.dispatched += 1
        logger.debug(
            "celery task dispatched", task_id=task.id, task=task.name, process_id=str(pid), queue=queue, actor=actor
        )

    def _forget(self, pid: UUID, task_id: str) -> None:
        tasks = self._pending.get(pid)
        if tasks is not None:
            tasks.pop(task_id, None)
            if not tasks:
                del self._pending[pid]

    # ----------------------------------------------------------------------------------------------- replies

    def _on_event(self, payload: str) -> None:
        if not self._pending:
            return
        try:
            event = json.loads(payload)
            pid = UUID(event["pid"])
        except (ValueError, KeyError, TypeError):
            return
        if event.get("status") in RUN_ENDED_STATUSES and pid in self._pending:
            self._wake.set()

    async def _answer_forever(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.recheck_interval)
            self._wake.clear()
            try:
                await self._answer_ended()
            except Exception as exc:  # keep answering through database hiccups
                logger.warning("celery shim reply check failed", error=str(exc))

    async def _answer_ended(self) -> None:
        """Reply to the clients of every pending process whose run has ended, as the database says now."""
        if not self._pending:
            return
        # Only what was registered before the query: a task registered meanwhile may be for the next run.
        waiting = {pid: list(tasks.values()) for pid, tasks in self._pending.items()}
        statuses = await self.store.statuses(list(waiting))
        for pid, tasks in waiting.items():
            status = statuses.get(pid)
            if status is not None and status not in RUN_ENDED_STATUSES:
                continue
            for task in tasks:
                try:
                    if status is None:
                        await self.consumer.reply_exception(task, ValueError(f"Process not found: {pid}"))
                    else:
                        await self.consumer.reply_success(task, str(pid))
                except (AMQPError, RuntimeError, ConnectionError) as exc:  # reconnecting: try again next round
                    logger.warning("celery reply failed; retrying", task_id=task.id, error=str(exc))
                    continue
                self._forget(pid, task.id)
                logger.debug("celery reply sent", task_id=task.id, process_id=str(pid), status=status)


# --------------------------------------------------------------------------------------------------- command


def run_shim(settings: AppSettings) -> int:
    """`orchestrator celery-shim`: run until SIGTERM/SIGINT; 0 when stopped, 2 on a configuration error or an
    unreachable broker."""
    try:
        check_layout(settings)
    except ValueError as exc:
        print(f"orchestrator celery-shim: {exc}", file=sys.stderr)
        return 2
    code: int = uvloop.run(_serve(settings))
    return code


async def _serve(settings: AppSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    location = await asyncio.to_thread(database.locate, settings.DATABASE_URI, settings.EMBEDDED_DATA_DIR)
    pool = await database.create_pool(location.dsn, size=settings.DB_POOL_SIZE)
    try:
        shim = CeleryShim(settings, pool)
        try:
            await shim.start()
        except (AMQPError, ConnectionError, OSError) as exc:
            print(
                f"orchestrator celery-shim: cannot consume from the Celery broker: {exc}; check CELERY_BROKER_URL "
                "(or BROKER_URL) and that the broker runs",
                file=sys.stderr,
            )
            return 2
        try:
            await stop.wait()
        finally:
            await shim.stop()
    finally:
        await pool.close()
    return 0
