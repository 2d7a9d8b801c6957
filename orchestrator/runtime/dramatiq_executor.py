"""Distributed mode (EXECUTOR=dramatiq, alias celery): the API records and dispatches, Dramatiq workers run.

Dispatch is a transactional outbox (`persistence/outbox.py`). `DramatiqExecutor.start`/`resume` write an `outbox`
row in the transaction that creates or resumes the process (a new process's row is written by its very insert,
`reserve`), so the status change and its dispatch commit together or not at all; an `OutboxRelay` (one in every
API process and in every worker process) publishes the rows to RabbitMQ with publisher confirms and deletes them.
After the commit the local relay is woken; the others only by a NOTIFY when it is not publishing (relays also
poll, so a lost notification only delays). RabbitMQ down: the API still answers, the rows
wait, and any relay publishes them once RabbitMQ is back. The API never runs steps here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from typing import Protocol

import structlog

from brokers.dramatiq import queue_declarations
from brokers.rabbitmq import Publisher
from orchestrator.persistence.records import Claim, Dispatch, ProcessRef
from orchestrator.persistence.transaction import Transaction
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

BRANCH_ACTOR = "run_branch"
"""The actor of a branch message `(process_id, [branch, ...])`: a batch of branches of a fork in flight
(`runtime/spread.py`); the sweeper's messages carry one branch, `(process_id, branch)`."""

BRANCH_BATCH = 16
"""At most this many branches per batch: a worker claims a message's branches in one statement, so a fork of
1,000 one-step branches costs 62 deliveries and claims (and the detach's claim of the first batch) instead of
1,000."""

BRANCH_MESSAGES_MIN = 2
"""A fork is cut into at least this many batches (or one per branch, when it has fewer): the first runs in the worker
that reached the fork, the others are messages, so small forks still spread over the workers (the two branches of a
pair run on two workers at once, when both are free). 2 rather than 4: a fork of 10 one-step branches costs one
delivery and claim instead of 3 (docs/performance.md)."""

DRAIN_TIMEOUT_SECONDS = 10.0
"""Bound on the last outbox drain at close (the broker may be down: the rows then wait for another relay)."""


def actor_for(kind: RunKind, *, is_task: bool) -> str:
    return ACTORS[(kind, is_task)]


def batches(paths: Sequence[str]) -> list[list[str]]:
    """The fork's branches cut into batches: in branch order, at most BRANCH_BATCH each, at least
    BRANCH_MESSAGES_MIN batches (fewer only with fewer branches), sizes differing by one at most."""
    count = min(len(paths), max(BRANCH_MESSAGES_MIN, -(-len(paths) // BRANCH_BATCH)))
    size, extra = divmod(len(paths), count) if count else (0, 0)
    out, start = [], 0
    for n in range(count):
        end = start + size + (1 if n < extra else 0)
        out.append(list(paths[start:end]))
        start = end
    return out


class LocalBranches(Protocol):
    """A worker's branch run slots, for the batch of a fork claimed where the fork was reached (`spread`)."""

    @property
    def owner(self) -> str: ...

    def reserve(self, wanted: int) -> int:
        """Reserve up to `wanted` free branch slots now, without waiting; how many were reserved."""
        ...

    def run_batch(self, claims: Sequence[Claim], reserved: int) -> None:
        """Run these branch claims, one reserved slot each; free the reserved slots left over."""
        ...


class DramatiqExecutor:
    """Dispatch through the outbox; run the outbox relay while open. Runs no steps itself, except in a worker
    (`local`), where a fork's first batch of branches runs in the worker that reached the fork."""

    kind = "dramatiq"

    def __init__(self, engine: Engine, settings: AppSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.relay: OutboxRelay | None = None
        self._publisher: Publisher | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self.local: LocalBranches | None = None
        """Set by a worker process: where a fork's first batch of branches runs (None in the API)."""
        engine.spread = self.spread

    async def spread(self, claim: Claim, paths: Sequence[str]) -> bool:
        """Dispatch the branches in batches (to the process's queue), in one statement; let the process go. In a
        worker, the first batch is claimed in that statement instead, as far as the worker has free branch slots,
        and run here at once: no message, no claim of its own."""
        queue = self.settings.queue_for(is_task=claim.is_task, target=claim.target)
        cut = batches(paths)
        local = self.local
        here = local.reserve(len(cut[0])) if local is not None and cut else 0
        claims = None
        try:
            claims = await self.engine.store.branch_claims.detach_fork(
                pid=claim.pid,
                token=claim.token,
                batches=cut,
                queue=queue,
                actor=BRANCH_ACTOR,
                run_by=claim.run_by,
                here=here,
                owner=local.owner if local is not None else "",
                lease_ttl=self.engine.lease_ttl,
            )
        finally:
            if local is not None:
                local.run_batch(claims or [], here)  # the slots it did not use are freed
        if claims is None:
            return False
        if here < len(paths):
            self.wake()
        return True

    def reserve(self, tx: Transaction, process: ProcessRef) -> Dispatch:
        """Workers claim what they run: a new process is inserted with its outbox row."""
        tx.on_commit_once(self.wake)
        return self._dispatch_of(process, "new")

    def lease_slot(self, tx: Transaction) -> None:
        return None  # workers claim what they run

    async def start(self, tx: Transaction, process: ProcessRef) -> None:
        await self._dispatch(tx, process, "new")

    async def resume(self, tx: Transaction, process: ProcessRef) -> None:
        await self._dispatch(tx, process, "resume")

    def _dispatch_of(self, process: ProcessRef, kind: RunKind) -> Dispatch:
        queue = self.settings.queue_for(is_task=process.is_task, target=process.target)
        return Dispatch(queue, actor_for(kind, is_task=process.is_task))

    async def _dispatch(self, tx: Transaction, process: ProcessRef, kind: RunKind) -> None:
        dispatch = self._dispatch_of(process, kind)
        await self.engine.store.enqueue_dispatch(
            tx, queue=dispatch.queue, actor=dispatch.actor, pid=process.pid, run_by=process.user
        )
        tx.on_commit_once(self.wake)

    def wake(self) -> None:
        """Publish what was just committed: by this program's relay when it is publishing (no NOTIFY, which would
        wake every other relay for an empty drain), else by the other instances' relays, woken by a NOTIFY."""
        if self.relay is not None and self.relay.publishing:
            self.relay.wake()
        else:
            self.engine.store.announce_outbox()

    async def open(self) -> None:
        # Connects lazily: the API starts, and accepts processes, while RabbitMQ is down.
        self._publisher = Publisher(self.settings.BROKER_URL, declarations=queue_declarations)
        self.relay = OutboxRelay(self.engine.store, self._publisher)
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
