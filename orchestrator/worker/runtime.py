"""`WorkerRuntime` is what one Dramatiq worker process runs behind the actors of `orchestrator.actors`: one pool,
one engine, one runner, one sweeper and one relay, all on the worker's AsyncIO event loop.

Ack strategy. RabbitMQ closes a channel whose delivery stays unacknowledged for `consumer_timeout` (30 minutes),
so a message must not stay unacked for the length of a run. A delivery waits for a free run slot (as many slots
as the worker has threads), claims the process (compare-and-set `created` → running for new, `resumed` → running
for resume), starts the run as a task on the event loop and returns, and Dramatiq acks. From the claim on, the
lease in PostgreSQL is the durable record, not the message: a worker that dies mid-run stops renewing its lease,
a sweeper (in any API or worker) marks the process `resumed` with a bumped fencing token and writes a re-dispatch
to the outbox, and the dead worker can never commit again. A delivery that finds no slot within
`DELIVERY_WAIT_SECONDS`, or arrives while the worker shuts down, hands the dispatch back through the outbox and
is acked; so even a prefetched message is acked within twice that wait, far below `consumer_timeout`. A delivery
that cannot claim (duplicate, stale, engine paused) is acked and logged, never run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any
from uuid import UUID

import structlog

from orchestrator.persistence.records import Claim
from orchestrator.runtime.dramatiq_executor import DramatiqExecutor
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.runtime.runner import CLAIMABLE, RunKind, Runner
from orchestrator.settings import AppSettings, ExecutorType

logger = structlog.get_logger(__name__)

DELIVERY_WAIT_SECONDS = 240.0
"""How long a delivery may wait for the worker to be ready and for a free run slot before it hands the dispatch
back; a prefetched message is acked within about twice this, well inside RabbitMQ's 30-minute consumer_timeout."""


BRANCH_SLOTS_PER_THREAD = 8
"""Run slots for branches per worker thread, beside the thread's one slot for a process run: a branch run is short
(its own steps, sync ones still bounded by the engine's thread pool), and the branches of a fork are many."""


class _Slots:
    """A count of free run slots, and an event set whenever one is freed."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.freed = asyncio.Event()

    def release(self) -> None:
        self.free += 1
        self.freed.set()


class WorkerRuntime:
    """Everything one Dramatiq worker process needs, opened on its event loop: see the module docstring."""

    def __init__(
        self,
        settings: AppSettings,
        *,
        queues: Sequence[str],
        threads: int,
        delivery_wait: float = DELIVERY_WAIT_SECONDS,
    ) -> None:
        self.settings = settings.model_copy(update={"EXECUTOR": ExecutorType.DRAMATIQ})
        self.queues = list(queues)
        self.threads = threads
        self.delivery_wait = delivery_wait
        self.orch: Orchestrator | None = None
        self.runner: Runner | None = None
        self._run_slots = _Slots(threads)
        self._branch_slots = _Slots(threads * BRANCH_SLOTS_PER_THREAD)
        self._ready = asyncio.Event()
        self._stopping = False
        self._stop = asyncio.Event()
        self._runs: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Task[None] | None = None
        self._abandoned = 0

    @property
    def executor(self) -> DramatiqExecutor:
        assert self.orch is not None
        executor = self.orch.executor
        assert isinstance(executor, DramatiqExecutor)
        return executor

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open in the background (call on the event loop): the worker boots even while PostgreSQL is
        unreachable, and deliveries wait for it (bounded)."""
        self._opening = asyncio.create_task(self.open(), name="worker-open")

    async def open(self) -> None:
        """Open, retrying while the database is unreachable (deliveries wait for it, bounded)."""
        backoff = 1.0
        while not self._stopping:
            try:
                await self._open_once()
            except Exception as exc:
                logger.error("worker could not open; retrying", error=repr(exc), retry_in=backoff)
                await self._close_orchestrator()
                with suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._stop.wait()
                backoff = min(backoff * 2, 30.0)
            else:
                self._ready.set()
                assert self.runner is not None
                logger.info("worker ready", worker=self.runner.owner_id, queues=self.queues, threads=self.threads)
                return

    async def _open_once(self) -> None:
        self.orch = orch = await Orchestrator(self.settings).open()
        self.runner = Runner(
            orch.engine, kind="dramatiq", queues=self.queues, capacity=self.threads, redispatch=self.executor.resume
        )
        await self.runner.open()
        self.executor.local = self

    async def drain(self, timeout: float) -> bool:
        """SIGTERM: take nothing new; running processes finish their current step and yield (`resumed`, dispatched
        again); wait for them up to `timeout`. True when none is left."""
        self._stopping = True
        self._stop.set()
        if self.runner is not None:
            self.runner.stopping = True
        runs = set(self._runs)
        if runs:
            logger.info("waiting for running steps to finish", processes=len(runs), timeout=timeout)
            _, pending = await asyncio.wait(runs, timeout=timeout)
            if pending:
                self._abandoned = len(pending)
                logger.warning(
                    "steps still running at shutdown; their leases expire and other workers take them over",
                    processes=len(pending),
                )
                return False
        return True

    async def close(self) -> int:
        """After Dramatiq stopped consuming: publish the re-dispatches, deregister, close the pool. Return how many
        runs were abandoned (a sync step still running: its outcome can no longer be committed)."""
        if not self._stopping:
            await self.drain(timeout=self.settings.SHUTDOWN_TIMEOUT_SECONDS)
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with suppress(asyncio.CancelledError):
                await self._opening
        for task in list(self._runs):
            task.cancel()
        if self._runs:
            # A sync step cannot be interrupted; do not wait for it (its lease expires, its outcome is refused).
            await asyncio.wait(set(self._runs), timeout=1.0)
        abandoned = max(self._abandoned, len(self._runs))
        if self.runner is not None:
            await self.runner.close()
        await self._close_orchestrator()
        logger.info("worker closed", abandoned_runs=abandoned)
        return abandoned

    async def _close_orchestrator(self) -> None:
        orch, self.orch = self.orch, None
        if orch is not None:
            await orch.close()

    # --- deliveries ---------------------------------------------------------------------------------------------

    async def deliver(self, kind: RunKind, process_id: Any, user: str | None) -> None:
        """Handle one message; returns (→ ack) once the process is claimed and running, or the delivery is done
        with. Never raises for a process-level reason: nothing here is worth a Dramatiq retry."""
        log = logger.bind(process_id=str(process_id), run=kind)
        try:
            pid = UUID(str(process_id))
        except ValueError:
            log.error("message dropped: process_id is not a UUID")
            return
        await self._deliver(
            lambda _free: self._claim_process(pid, kind, user),
            lambda reason: self._hand_back(pid, kind, user, log, reason=reason),
            log,
            self._run_slots,
        )

    async def _claim_process(self, pid: UUID, kind: RunKind, user: str | None) -> list[Claim]:
        claim = await self._runner().claim(pid, kind, user)
        return [] if claim is None else [claim]

    async def deliver_branch(self, process_id: Any, paths: Any) -> None:
        """Handle one branch message (`runtime/spread.py`): a batch of branches (or one), claimed together, as many
        as there are free branch slots; the rest is sent again as one message."""
        log = logger.bind(process_id=str(process_id), branch=str(paths))
        try:
            pid = UUID(str(process_id))
        except ValueError:
            log.error("message dropped: process_id is not a UUID")
            return
        batch = [paths] if isinstance(paths, str) else paths
        if not isinstance(batch, list) or not batch or not all(isinstance(p, str) and p for p in batch):
            log.error("message dropped: the branches are not non-empty strings")
            return
        await self._deliver(
            lambda free: self._claim_branches(pid, batch, free, log),
            lambda reason: self._hand_back_branches(pid, batch, log, reason=reason),
            log,
            self._branch_slots,
            want=len(batch),
        )

    async def _claim_branches(self, pid: UUID, batch: list[str], free: int, log: Any) -> list[Claim]:
        claims = await self._runner().claim_branches(pid, batch, free)
        if free < len(batch):  # no slot for the rest: another worker (or this one, later) takes it
            await self._hand_back_branches(pid, batch, log, reason="no free slot for the whole batch")
        return claims

    async def _deliver(
        self,
        claim: Callable[[int], Awaitable[list[Claim]]],
        hand_back: Callable[[str], Awaitable[None]],
        log: Any,
        slots: _Slots,
        *,
        want: int = 1,
    ) -> None:
        """Wait for the worker and a free slot, take up to `want` slots, claim (at most that many), start a run per
        claim; slots left unused are released."""
        deadline = time.monotonic() + self.delivery_wait
        if not await self._wait(self._ready_or_stopping, self._ready, deadline) or not self._ready.is_set():
            log.warning(
                "worker not ready (database unreachable?); delivery dropped, the sweeper dispatches the process again"
            )
            return
        if not await self._wait(lambda: slots.free > 0 or self._stopping, slots.freed, deadline) or self._stopping:
            await hand_back("shutdown" if self._stopping else "no free slot")
            return
        taken = min(slots.free, want)
        slots.free -= taken
        started = 0
        try:
            started = await self._claim_and_start(claim, taken, log, slots)
        except Exception:
            log.exception("claim failed; the sweeper dispatches the process again")
        finally:
            for _ in range(taken - started):
                slots.release()

    def _runner(self) -> Runner:
        assert self.runner is not None  # set before the runtime is ready
        return self.runner

    async def _claim_and_start(
        self, take: Callable[[int], Awaitable[list[Claim]]], free: int, log: Any, slots: _Slots
    ) -> int:
        claims = await take(free)
        self._start(claims, slots, log)
        return len(claims)

    def _start(self, claims: Sequence[Claim], slots: _Slots, log: Any) -> None:
        """Run each claim as a task of its own, holding one of `slots` until it ends. One log line per batch of
        branches, not per branch: at INFO, a line per branch cost the worker more than its branch's claim."""
        for claim in claims:
            task = asyncio.create_task(self._run(claim, slots), name=f"run-{claim.pid}")
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)
        if not claims:
            return
        worker = self._runner().owner_id
        if claims[0].branch is None:
            log.info("claimed", worker=worker, token=claims[0].token)
        else:
            log.info("claimed", worker=worker, branches=[claim.branch for claim in claims])

    # --- a fork's first batch, claimed where the fork was reached (`DramatiqExecutor.local`) -------------------

    @property
    def owner(self) -> str:
        return self._runner().owner_id

    def reserve(self, wanted: int) -> int:
        """Take up to `wanted` free branch slots, without waiting (none while draining)."""
        taken = 0 if self._stopping else min(self._branch_slots.free, wanted)
        self._branch_slots.free -= taken
        return taken

    def run_batch(self, claims: Sequence[Claim], reserved: int) -> None:
        """Start the branches claimed with their fork's detach. Their tasks first run once the run that reached the
        fork has let its process go (it does not wait between the detach and its end): the process is adopted
        again, by the branch that joins, only after that."""
        self._runner().adopt_branches(claims)
        self._start(claims, self._branch_slots, logger.bind(process_id=str(claims[0].pid)) if claims else logger)
        for _ in range(reserved - len(claims)):
            self._branch_slots.release()

    async def _run(self, claim: Claim, slots: _Slots) -> None:
        runner = self.runner
        assert runner is not None
        try:
            await runner.run_claimed(claim)
        except Exception:
            logger.exception("run crashed; the process is taken over once its lease expires", process_id=str(claim.pid))
        finally:
            slots.release()

    async def _hand_back(self, pid: UUID, kind: RunKind, user: str | None, log: Any, *, reason: str) -> None:
        """Dispatch again through the outbox (if the process still waits for this kind of run), then ack."""
        try:
            store = self.executor.engine.store
            async with store.transaction() as tx:
                found = await store.lock_for_dispatch(tx, pid, user or "SYSTEM")
                if found is None or found[1] not in CLAIMABLE[kind]:
                    log.info("stale delivery acknowledged", reason=reason)
                    return
                ref, _status = found
                await (self.executor.start if kind == "new" else self.executor.resume)(tx, ref)
            log.info("delivery handed back through the outbox", reason=reason)
        except Exception:
            log.exception("hand-back failed; the sweeper dispatches the process again", reason=reason)

    async def _hand_back_branches(self, pid: UUID, paths: list[str], log: Any, *, reason: str) -> None:
        try:
            await self.executor.engine.store.branch_claims.resend(pid, paths)
            log.info("branch message handed back through the outbox", reason=reason)
        except Exception:
            log.exception("hand-back failed; the sweeper dispatches the branch again", reason=reason)

    # --- waiting ------------------------------------------------------------------------------------------------

    def _ready_or_stopping(self) -> bool:
        return self._ready.is_set() or self._stopping

    async def _wait(self, condition: Callable[[], bool], event: asyncio.Event, deadline: float) -> bool:
        """Wait until `condition()` holds, re-checked whenever `event` or the stop event is set; False on timeout."""
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event.clear()  # safe: the condition was checked just now, with no await in between
            waiters = [asyncio.ensure_future(e.wait()) for e in (event, self._stop)]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return True

    @property
    def running(self) -> int:
        return len(self._runs)
