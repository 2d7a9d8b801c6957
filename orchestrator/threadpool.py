"""The default executor: processes run as asyncio tasks in the app's event loop, at most MAX_WORKERS at once.

Queued processes stay `created`/`resumed` in the database until a slot claims them, so a crash loses nothing:
on the next start they are dispatched again, and a process whose runner died mid-step is taken over once its
lease expires. Sync steps run in the engine's bounded thread pool.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from uuid import UUID

import structlog

from orchestrator.engine import Engine
from orchestrator.runner import RunKind, Runner
from orchestrator.store import ProcessRef, Transaction

logger = structlog.get_logger(__name__)


class ThreadPoolExecutor:
    kind = "threadpool"

    def __init__(self, engine: Engine, *, max_workers: int, shutdown_timeout: float) -> None:
        self.max_workers = max_workers
        self.shutdown_timeout = shutdown_timeout
        self.runner = Runner(engine, kind=self.kind, capacity=max_workers, redispatch=self.resume)
        self._queue: asyncio.Queue[tuple[UUID, RunKind, str]] = asyncio.Queue()
        self._queued: set[UUID] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return len(self.runner.active)

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
            pid, kind, user = await self._queue.get()
            self._queued.discard(pid)
            self._busy.add(current)
            self._idle.clear()
            try:
                await self.runner.run(pid, kind, user)
            except Exception:
                logger.exception(
                    "run crashed; the process will be taken over when its lease expires", process_id=str(pid)
                )
            finally:
                self._busy.discard(current)
                if not self._busy:
                    self._idle.set()

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
        await self.runner.close()
