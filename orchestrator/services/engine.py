"""The engine as a whole: its pause lock and status, and retrying every failed task at once."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from orchestrator.dsl.types import FAILED_STATUSES, SYSTEM_USER
from orchestrator.exceptions import EngineLockedError
from orchestrator.persistence import reads
from orchestrator.runtime.orchestrator import Orchestrator, current
from orchestrator.services.processes import resume_process

logger = structlog.get_logger(__name__)

ENGINE_RUNNING, ENGINE_PAUSING, ENGINE_PAUSED = "RUNNING", "PAUSING", "PAUSED"

_background: set[asyncio.Task[None]] = set()


async def engine_status(*, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    orch = orchestrator or current()
    locked = await orch.store.engine_locked()
    running = await orch.store.running_count()
    status = ENGINE_RUNNING if not locked else (ENGINE_PAUSING if running else ENGINE_PAUSED)
    return {"global_lock": locked, "global_status": status, "running_processes": running}


async def set_engine_lock(locked: bool, *, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    """Pause (running processes stop before their next step) or unpause (everything waiting is dispatched)."""
    orch = orchestrator or current()
    async with orch.store.transaction() as tx:
        previous = await orch.store.set_engine_lock(tx, locked)
    if previous and not locked and orch.sweeper is not None:
        count = await orch.sweeper.dispatch_undispatched(older_than=0)
        logger.info("engine unpaused", dispatched=count)
    elif previous != locked:
        logger.info("engine paused" if locked else "engine unpaused")
    return await engine_status(orchestrator=orch)


async def resume_all(*, user: str = SYSTEM_USER, orchestrator: Orchestrator | None = None) -> int:
    """Retry every task in failed, waiting, api_unavailable or inconsistent_data; return how many were found."""
    orch = orchestrator or current()
    if await orch.store.engine_locked():
        raise EngineLockedError
    pids = await reads.task_ids(orch.store.pool, FAILED_STATUSES)

    async def retry_each() -> None:
        for pid in pids:
            try:
                await resume_process(pid, [{}], user=user, orchestrator=orch)
            except Exception as exc:  # one failure does not stop the batch
                logger.warning("resume-all: process not resumed", process_id=str(pid), error=str(exc))

    task = asyncio.create_task(retry_each(), name="resume-all")
    _background.add(task)
    task.add_done_callback(_background.discard)
    return len(pids)
