"""The default executor: processes run as asyncio tasks in the app's event loop, at most MAX_WORKERS at once.

Queued processes stay `created`/`resumed` in the database until a slot claims them, so a crash loses nothing:
on the next start they are dispatched again, and a process whose runner died mid-step is taken over once its
lease expires. While a slot is free, a new process is inserted already claimed (`running`, under this runner's
lease): one commit less per process, and the same guarantees as a claim. Sync steps run in the engine's bounded
thread pool.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from uuid import UUID

import structlog

from orchestrator.persistence.records import Claim, Lease, ProcessRef
from orchestrator.persistence.transaction import Transaction
from orchestrator.runtime.engine import Engine
from orchestrator.runtime.runner import RunKind, Runner

logger = structlog.get_logger(__name__)


class InProcessExecutor:
    kind = "threadpool"

    def __init__(self, engine: Engine, *, max_workers: int, shutdown_timeout: float) -> None:
        self.max_workers = max_workers
        self.shutdown_timeout = shutdown_timeout
        self.runner = Runner(engine, kind=self.kind, capacity=max_workers, redispatch=self.resume)
        self._queue: asyncio.Queue[tuple[UUID, RunKind, str] | Claim] = asyncio.Queue()
        self._queued: set[UUID] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._leased = 0
        """Run slots reserved for processes being inserted claimed, not yet queued."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return len(self.runner.active)

    def reserve(self, tx: Transaction, process: ProcessRef) -> Lease | None:
        return self.lease_slot(tx)

    def lease_slot(self, tx: Transaction) -> Lease | None:
        if len(self._busy) + self._queue.qsize() + self._leased >= self.max_workers:
            return None
        lease = self.runner.lease(on_claimed=self._enqueue_claimed)
        if lease is not None:
            self._leased += 1
            tx.on_rollback(self._unlease)
        return lease

    def _unlease(self) -> None:
        self._leased -= 1

    def _enqueue_claimed(self, claim: Claim) -> None:
        self._leased -= 1
        self.runner.adopt(claim)
        self._queue.put_nowait(claim)

    async def start(self, tx: Transaction, process: ProcessRef) -> None:
        tx.on_commit(lambda: self._enqueue(process.pid, "new", process.user))

    async def resume(self, tx: Transaction, process: ProcessRef) -> None:
        tx.on_commit(lambda: self._enqueue(process.pid, "resume", process.user))

    def _enqueue(self, pid: UUID, kind: RunKind, user: str) -> None:
        if self._closing or pid in self._queued:
            return
        self._queued.add(pid)
        self._queue.put_nowait((pid, kind, user))

    async def _work(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        while True:
            item = await self._queue.get()
            self._busy.add(current)
            self._idle.clear()
            try:
                await self._run(item)
            except Exception:
                pid = item.pid if isinstance(item, Claim) else item[0]
                logger.exception(
                    "run crashed; the process will be taken over when its lease expires", process_id=str(pid)
                )
            finally:
                self._busy.discard(current)
                if not self._busy:
                    self._idle.set()

    async def _run(self, item: tuple[UUID, RunKind, str] | Claim) -> None:
        if isinstance(item, Claim):
            await self.runner.run_claimed(item)
            return
        pid, kind, user = item
        self._queued.discard(pid)
        await self.runner.run(pid, kind, user)

    async def open(self) -> None:
        await self.runner.open()
        self._workers = [asyncio.create_task(self._work(), name=f"process-slot-{i}") for i in range(self.max_workers)]

    async def close(self) -> None:
        """No new steps start; running steps finish (bounded by the shutdown timeout); the rest stays resumable."""
        self._closing = True
        self.runner.stopping = True
        if self._busy:
            logger.info("waiting for running steps to finish", processes=len(self._busy), timeout=self.shutdown_timeout)
            # The slots are endless loops: wait for them to be idle, not for them to finish.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.shutdown_timeout)
            if self._busy:
                logger.warning(
                    "steps still running at shutdown; their leases will expire and they will be taken over",
                    processes=len(self._busy),
                )
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():  # claimed but not started: a stopping run leaves them `resumed`
            if isinstance(item := self._queue.get_nowait(), Claim):
                await self.runner.run_claimed(item)
        await self.runner.close()
