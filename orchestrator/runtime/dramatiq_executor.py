"""Distributed mode (EXECUTOR=dramatiq, alias celery): the API records and dispatches, Dramatiq workers run.

Dispatch is a transactional outbox. `DramatiqExecutor.start`/`resume` insert an `outbox` row in the transaction
that creates or resumes the process, so the status change and its dispatch commit together or not at all; an
`OutboxRelay` (one in every API process and in every worker process) publishes the rows to RabbitMQ with
publisher confirms and deletes them. After the commit the local relay is woken and `orchestrator_outbox` is
NOTIFYed for the others (batched, off the data path: a NOTIFY inside the transaction would serialise commits on
PostgreSQL's notify lock; relays also poll, so a lost notification only delays). RabbitMQ down: the API still
answers, the rows wait, and any relay publishes them once RabbitMQ is back. The API never runs steps here.
"""

from __future__ import annotations

import asyncio
import weakref
from contextlib import suppress

import structlog

from brokers.dramatiq import queue_declarations
from brokers.rabbitmq import Publisher
from orchestrator.persistence.store import OUTBOX_CHANNEL, NewProcess, ProcessRef, Transaction
from orchestrator.runtime.engine import Engine
from orchestrator.runtime.outbox_relay import OutboxRelay
from orchestrator.runtime.runner import RunKind
from orchestrator.settings import AppSettings

logger = structlog.get_logger(__name__)

ACTORS: dict[tuple[RunKind, bool], str] = {
    ("new", True): "new_task",
    ("new", False): "new_workflow",
    ("resume", True): "resume_task",
    ("resume", False): "resume_workflow",
}
"""The actor of a dispatch, by (new or resume, is_task): orchestrator-core's four task names."""

DRAIN_TIMEOUT_SECONDS = 10.0
"""Bound on the last outbox drain at close (the broker may be down: the rows then wait for another relay)."""

# A dispatch already waiting in the outbox and not being published right now is not written twice (the sweeper
# dispatches again every REDISPATCH_AFTER_SECONDS while RabbitMQ is down). The found row is locked until commit, so
# a relay cannot publish and delete it before this transaction's status change is visible.
_ENQUEUE = """
WITH waiting AS (
    SELECT id FROM outbox WHERE pid = $3 AND actor = $2 AND queue = $1 AND run_by = $4
     LIMIT 1 FOR UPDATE SKIP LOCKED
)
INSERT INTO outbox (queue, actor, pid, run_by) SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM waiting)
"""


def actor_for(kind: RunKind, *, is_task: bool) -> str:
    return ACTORS[(kind, is_task)]


class DramatiqExecutor:
    """Dispatch through the outbox; run the outbox relay while open. Runs no steps itself."""

    kind = "dramatiq"

    def __init__(self, engine: Engine, settings: AppSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.relay: OutboxRelay | None = None
        self._publisher: Publisher | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._announced: weakref.WeakSet[Transaction] = weakref.WeakSet()

    async def create(self, tx: Transaction, process: NewProcess) -> bool:
        await self.start(tx, process.ref)
        return await self.engine.store.create_process(tx, process) is not None

    async def start(self, tx: Transaction, process: ProcessRef) -> None:
        await self._dispatch(tx, process, "new")

    async def resume(self, tx: Transaction, process: ProcessRef) -> None:
        await self._dispatch(tx, process, "resume")

    async def _dispatch(self, tx: Transaction, process: ProcessRef, kind: RunKind) -> None:
        queue = self.settings.queue_for(is_task=process.is_task, target=process.target)
        actor = actor_for(kind, is_task=process.is_task)
        await tx.conn.execute(_ENQUEUE, queue, actor, process.pid, process.user)
        if tx not in self._announced:  # once per transaction, however many dispatches it holds
            self._announced.add(tx)
            tx.on_commit(self._committed)

    def _committed(self) -> None:
        self.wake()
        self.engine.store.events.publish({}, channel=OUTBOX_CHANNEL)

    def wake(self) -> None:
        """Publish now: this process's relay need not wait for the notification."""
        if self.relay is not None:
            self.relay.wake()

    async def open(self) -> None:
        # Connects lazily: the API starts, and accepts processes, while RabbitMQ is down.
        self._publisher = Publisher(self.settings.BROKER_URL, declarations=queue_declarations)
        self.relay = OutboxRelay(self.engine.store.pool, self._publisher)
        self._relay_task = asyncio.create_task(self.relay.run(), name="outbox-relay")

    async def close(self) -> None:
        """Publish what is waiting (bounded), then stop the relay; unpublished rows wait for another relay."""
        relay, task, publisher = self.relay, self._relay_task, self._publisher
        self.relay = self._relay_task = self._publisher = None
        if relay is not None:
            try:
                async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                    await relay.drain()
            except Exception as exc:  # broker or database down: the rows stay in the outbox
                logger.warning("outbox not drained at close; another relay publishes the rest", error=repr(exc))
            relay.stop()
        if task is not None:
            with suppress(asyncio.CancelledError):
                await task
        if publisher is not None:
            await publisher.close()
