"""`Orchestrator`: one program's database pool, workflow registry, engine, executor and sweeper, opened and
closed together. The HTTP app, the Dramatiq workers and the CLI each hold one.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from types import TracebackType
from typing import Self
from uuid import UUID

import structlog

from orchestrator import log
from orchestrator.dsl.workflow import WORKFLOWS, WorkflowRegistry, import_workflow_modules
from orchestrator.persistence import database, migrations
from orchestrator.persistence.process_watch import ProcessWatch
from orchestrator.persistence.records import Lease
from orchestrator.persistence.store import Store
from orchestrator.runtime.engine import Engine
from orchestrator.runtime.executor import Executor
from orchestrator.runtime.retention import prune_task
from orchestrator.runtime.schedules import fire_due_schedules, upsert_code_schedules
from orchestrator.runtime.sweeper import Sweeper
from orchestrator.runtime.timers import TimerLoop
from orchestrator.settings import AppSettings, ExecutorType, load_settings

logger = structlog.get_logger(__name__)

_current: Orchestrator | None = None


def current() -> Orchestrator:
    """The open Orchestrator of this program (used by the module-level Python API)."""
    if _current is None:
        raise RuntimeError("No Orchestrator is open; use `async with Orchestrator(...)` first")
    return _current


class Orchestrator:
    def __init__(
        self,
        settings: AppSettings | None = None,
        *,
        registry: WorkflowRegistry = WORKFLOWS,
        run_processes: bool = True,
    ) -> None:
        """`run_processes=False` opens the store only (CLI commands, the Celery shim): no executor runs steps."""
        self.settings = settings or load_settings()
        self.registry = registry
        self.run_processes = run_processes
        self._pool: database.Pool | None = None
        self._store: Store | None = None
        self._executor: Executor | None = None
        self._engine: Engine | None = None
        self._process_watch: ProcessWatch | None = None
        self.location: database.DatabaseLocation | None = None
        self.workflow_ids: dict[str, UUID] = {}
        self._sweeper_task: asyncio.Task[None] | None = None
        self.sweeper: Sweeper | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self.timers: TimerLoop | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("Orchestrator is not open")
        return self._store

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise RuntimeError("Orchestrator has no executor (not open, or opened with run_processes=False)")
        return self._executor

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("Orchestrator is not open")
        return self._engine

    @property
    def process_watch(self) -> ProcessWatch:
        """Wake-ups on process changes made by any program on this database (`wait_for_process`)."""
        if self._process_watch is None:
            raise RuntimeError("Orchestrator is not open")
        return self._process_watch

    async def open(self) -> Self:
        global _current
        s = self.settings
        log.configure_unless_configured(s)
        self.location = await asyncio.to_thread(database.locate, s.DATABASE_URI, s.EMBEDDED_DATA_DIR)
        logger.info("database", where=self.location.describe())
        self._pool = await database.create_pool(
            self.location.dsn, size=s.DB_POOL_SIZE, synchronous_commit=s.DB_SYNCHRONOUS_COMMIT
        )
        if s.MIGRATE_ON_START:
            async with self._pool.acquire() as conn:
                await migrations.upgrade(conn)
        self._store = Store(self._pool)
        self._process_watch = ProcessWatch(self.location.dsn)
        import_workflow_modules(s.WORKFLOW_MODULES)
        if s.PRUNE_COMPLETED_OLDER_THAN is not None:
            task = prune_task(
                self._pool, s.PRUNE_COMPLETED_OLDER_THAN, tasks_only=s.PRUNE_TASKS_ONLY, cron=s.PRUNE_CRON
            )
            self.registry = WorkflowRegistry({**self.registry, task.name: task})
        self.workflow_ids = await self._store.upsert_workflows(
            [(wf.name, wf.target.value, wf.description, wf.is_task) for wf in self.registry.values()]
        )
        await upsert_code_schedules(self)
        self._engine = Engine(
            self._store,
            self.registry,
            max_threads=s.MAX_WORKERS,
            lease_ttl=s.LEASE_TTL_SECONDS,
            max_branches=s.MAX_BRANCHES,
        )
        self._executor = self._make_executor()
        await self._executor.open()
        in_process = s.EXECUTOR is ExecutorType.THREADPOOL
        self.sweeper = Sweeper(
            self._store,
            self._executor,
            interval=s.SWEEP_INTERVAL_SECONDS,
            redispatch_after=s.REDISPATCH_AFTER_SECONDS,
            # Runs here only what this program can run; a worker fails an unknown workflow's process instead.
            workflow_ids=list(self.workflow_ids.values()) if in_process else None,
            retry_waiting_after=s.RETRY_WAITING_AFTER_SECONDS,
        )
        if self.run_processes and in_process:
            # Queued and interrupted processes of an earlier run of this program continue now.
            await self.sweeper.dispatch_undispatched(older_than=0)
        if self.run_processes or s.EXECUTOR is ExecutorType.DRAMATIQ:
            # A program that runs no processes must not take them over: it could not run them.
            self._sweeper_task = asyncio.create_task(self.sweeper.run_forever(), name="sweeper")
            self.timers = TimerLoop(self._store, self._executor, fire_schedules=self._fire_schedules)
            self._timer_task = asyncio.create_task(self.timers.run_forever(), name="timers")
        _current = self
        return self

    def _make_executor(self) -> Executor:
        s = self.settings
        if s.EXECUTOR is ExecutorType.DRAMATIQ:
            from orchestrator.runtime.dramatiq_executor import DramatiqExecutor

            executor: Executor = DramatiqExecutor(self.engine, s)
            return executor
        from orchestrator.runtime.inprocess import InProcessExecutor

        if not self.run_processes:
            return _DispatchOnly()
        return InProcessExecutor(self.engine, max_workers=s.MAX_WORKERS, shutdown_timeout=s.SHUTDOWN_TIMEOUT_SECONDS)

    async def _fire_schedules(self) -> int:
        return await fire_due_schedules(self)

    async def close(self) -> None:
        global _current
        if self.timers is not None and self._timer_task is not None:
            self.timers.stop()
            with suppress(TimeoutError):  # a firing that hangs (database gone) is cancelled below
                await asyncio.wait_for(asyncio.shield(self._timer_task), self.settings.SHUTDOWN_TIMEOUT_SECONDS)
        for task in (self._sweeper_task, self._timer_task):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if self._executor is not None:
            await self._executor.close()
        if self._process_watch is not None:
            await self._process_watch.close()
        if self._store is not None:
            await self._store.events.close()
            await self._store.listener.stop()  # a subscriber left (an app's hub) must not hold the pool open
        if self._pool is not None:
            await self._pool.close()
        if _current is self:
            _current = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _DispatchOnly:
    """Executor of a program that runs no processes itself (threadpool CLI tools): dispatch is left to the
    sweeper of the program that runs them, which picks up `created`/`resumed` processes at start-up."""

    kind = "none"

    def reserve(self, tx: object, process: object) -> Lease | None:
        return None

    def lease_slot(self, tx: object) -> Lease | None:
        return None

    async def start(self, tx: object, process: object) -> None:
        return None

    async def resume(self, tx: object, process: object) -> None:
        return None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None
