"""The threadpool executor inserts a new process already claimed while a slot is free, and `created` otherwise."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest
from support.database import step_rows
from support.waiting import wait_status

from orchestrator import services
from orchestrator.exceptions import EngineLockedError
from orchestrator.runtime.inprocess import InProcessExecutor
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings

SLOW_STEPS = [("Start", "success"), ("Slow", "success"), ("After slow", "success"), ("Done", "complete")]


@pytest.fixture
async def one_slot(settings: AppSettings) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(settings.model_copy(update={"MAX_WORKERS": 1})) as orchestrator:
        yield orchestrator


def owner_of(orch: Orchestrator) -> str:
    executor = orch.executor
    assert isinstance(executor, InProcessExecutor)
    return executor.runner.owner_id


async def lease_of(orch: Orchestrator, pid: UUID) -> tuple[str, str | None, int]:
    row = await orch.store.pool.fetchrow(
        "SELECT last_status, lease_owner, fencing_token FROM processes WHERE pid = $1", pid
    )
    assert row is not None
    return row["last_status"], row["lease_owner"], row["fencing_token"]


async def test_a_start_with_a_slot_free_is_inserted_claimed(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_SLOW_SECONDS", "0.3")
    pid = await services.start_process("tf_slow", [{}], orchestrator=orch)
    # No slot has taken it yet (nothing awaited since the commit), and it is already ours: one claim, by insert.
    assert await lease_of(orch, pid) == ("running", owner_of(orch), 1)
    assert (await wait_status(orch, pid))["last_status"] == "completed"
    assert await step_rows(orch.store.pool, pid) == SLOW_STEPS


async def test_with_every_slot_busy_a_start_is_created_and_runs_when_one_frees(
    one_slot: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_SLOW_SECONDS", "0.3")
    busy = await services.start_process("tf_slow", [{}], orchestrator=one_slot)
    queued = await services.start_process("tf_slow", [{}], orchestrator=one_slot)
    assert await lease_of(one_slot, queued) == ("created", None, 0)
    for pid in (busy, queued):
        assert (await wait_status(one_slot, pid))["last_status"] == "completed"
        assert await step_rows(one_slot.store.pool, pid) == SLOW_STEPS


async def test_a_start_refused_by_a_pause_gives_its_slot_back(one_slot: Orchestrator) -> None:
    await services.set_engine_lock(True, orchestrator=one_slot)
    with pytest.raises(EngineLockedError):
        await services.start_process("tf_simple", [{}], orchestrator=one_slot)
    await services.set_engine_lock(False, orchestrator=one_slot)
    pid = await services.start_process("tf_simple", [{}], orchestrator=one_slot)
    assert await lease_of(one_slot, pid) == ("running", owner_of(one_slot), 1)  # the one slot was free again
    assert (await wait_status(one_slot, pid))["last_status"] == "completed"


async def test_a_start_whose_insert_fails_gives_its_slot_back(one_slot: Orchestrator) -> None:
    with pytest.raises(asyncpg.DataError):  # PostgreSQL refuses a NUL character
        await services.start_process("tf_simple", [{}], user="a\x00b", orchestrator=one_slot)
    pid = await services.start_process("tf_simple", [{}], orchestrator=one_slot)
    assert await lease_of(one_slot, pid) == ("running", owner_of(one_slot), 1)


async def test_processes_of_workflows_not_loaded_are_left_for_a_program_that_loads_them(
    settings: AppSettings, database_uri: str
) -> None:
    """A program started without a workflow's module neither runs nor fails that workflow's waiting processes."""
    conn = await asyncpg.connect(database_uri)
    try:
        workflow_id = await conn.fetchval(
            "INSERT INTO workflows (name, target, description) VALUES ('elsewhere', 'SYSTEM', '') RETURNING workflow_id"
        )
        statuses = {uuid.uuid4(): status for status in ("created", "resumed", "running")}
        for pid, status in statuses.items():  # the running one's runner died an hour ago
            await conn.execute(
                "INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, assignee, last_modified_at,"
                " lease_owner, lease_expires_at) VALUES ($1, $2, $3, 'u', false, 'SYSTEM', now() - interval '1 hour',"
                " 'gone', now() - interval '1 hour')",
                pid,
                workflow_id,
                status,
            )
        async with Orchestrator(settings) as orch:  # its start-up dispatches what waits, of its own workflows
            assert await orch.sweeper.dispatch_undispatched(older_than=0) == 0
            assert await orch.sweeper.take_over_expired() == 0
            executor = orch.executor
            assert isinstance(executor, InProcessExecutor)
            assert (executor.queued, executor.running) == (0, 0)
        rows = await conn.fetch("SELECT pid, last_status FROM processes WHERE workflow_id = $1", workflow_id)
        assert {r["pid"]: r["last_status"] for r in rows} == statuses
    finally:
        await conn.close()
