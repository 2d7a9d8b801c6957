"""Real subprocesses: a runner SIGKILLed mid-step is taken over; SIGTERM drains and leaves processes resumable."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from support.database import step_rows
from support.processes import ENGINE_SCRIPT
from support.waiting import wait_until

from orchestrator import services
from orchestrator.persistence.stepwriter import StepOutcome
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings

SLOW_STEPS = [("Start", "success"), ("Slow", "success"), ("After slow", "success"), ("Done", "complete")]


@pytest.fixture
async def creator(settings: AppSettings) -> AsyncIterator[Orchestrator]:
    """Creates processes without running them (the subprocesses run them)."""
    async with Orchestrator(settings, run_processes=False) as orchestrator:
        yield orchestrator


@pytest.fixture
def spawn(worker_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **extra: str) -> subprocess.Popen[str]:
        env = {**worker_env, "LEASE_TTL_SECONDS": "2", "SWEEP_INTERVAL_SECONDS": "0.5", "MAX_WORKERS": "4", **extra}
        log = (tmp_path / f"engine-{len(started)}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, str(ENGINE_SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready" in line, (tmp_path / f"engine-{len(started)}.log").read_text()
        started.append(proc)
        return proc

    yield start  # type: ignore[misc]
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def status_of(orch: Orchestrator, pid: UUID) -> str:
    return str((await services.get_process(pid, orchestrator=orch))["last_status"])


async def in_slow_step(pool: Any, pid: UUID) -> bool:
    """Claimed and running its first user step: the built-in `Start` before it is written with that step's row."""
    status = await pool.fetchval("SELECT last_status FROM processes WHERE pid = $1", pid)
    return status == "running" and await step_rows(pool, pid) == []


async def kill_mid_step_and_take_over(
    creator: Orchestrator, spawn: Callable[..., subprocess.Popen[str]], first: subprocess.Popen[str], pids: list[UUID]
) -> None:
    """SIGKILL `first` while every process is in its slow step; a new program completes them, each step once."""
    pool = creator.store.pool

    async def all_in_slow_step() -> bool:
        return all([await in_slow_step(pool, pid) for pid in pids])

    await wait_until(all_in_slow_step, 15)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert {await status_of(creator, pid) for pid in pids} == {"running"}  # stranded, until the lease expires
    spawn(TF_SLOW_SECONDS="0.1")

    async def all_completed() -> bool:
        return {await status_of(creator, pid) for pid in pids} == {"completed"}

    await wait_until(all_completed, 30)
    for pid in pids:
        assert await step_rows(pool, pid) == SLOW_STEPS  # each step logged once


async def test_runner_killed_mid_step_is_taken_over(
    creator: Orchestrator, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    pids = [await services.start_process("tf_slow", [{}], orchestrator=creator) for _ in range(3)]
    await kill_mid_step_and_take_over(creator, spawn, spawn(TF_SLOW_SECONDS="3"), pids)


async def test_a_program_killed_mid_step_loses_nothing_it_inserted_claimed(
    creator: Orchestrator, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """With a slot free, a start inserts its process already `running` under the program's lease: killed, the
    program leaves it to be taken over like any claim."""
    first = spawn("tf_slow", "3", TF_SLOW_SECONDS="3")
    leases = await creator.store.pool.fetch("SELECT pid, last_status, lease_owner, fencing_token FROM processes")
    assert len(leases) == 3
    assert len({(r["last_status"], r["lease_owner"], r["fencing_token"]) for r in leases}) == 1  # all held alike
    assert leases[0]["last_status"] == "running"
    await kill_mid_step_and_take_over(creator, spawn, first, [r["pid"] for r in leases])


async def test_sigterm_drains_and_the_next_start_continues(
    creator: Orchestrator, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    pids = [await services.start_process("tf_slow", [{}], orchestrator=creator) for _ in range(4)]
    first = spawn(TF_SLOW_SECONDS="1.5", MAX_WORKERS="2", SHUTDOWN_TIMEOUT_SECONDS="10")
    pool = creator.store.pool

    async def two_in_the_slow_step() -> bool:
        return [await in_slow_step(pool, pid) for pid in pids].count(True) == 2

    await wait_until(two_in_the_slow_step, 15)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=20)
    assert first.returncode == 0, out
    assert "drained" in out
    statuses = [await status_of(creator, pid) for pid in pids]
    # The two in flight finished their step and were left resumable; the queued two never started.
    assert sorted(statuses) == ["created", "created", "resumed", "resumed"], statuses
    # The steps in flight finished during the drain; nothing started after SIGTERM.
    rows = sorted([await step_rows(pool, pid) for pid in pids], key=len)
    assert rows == [[], [], [("Start", "success"), ("Slow", "success")], [("Start", "success"), ("Slow", "success")]]
    spawn(TF_SLOW_SECONDS="0.05")

    async def all_completed() -> bool:
        return {await status_of(creator, pid) for pid in pids} == {"completed"}

    await wait_until(all_completed, 30)
    for pid in pids:
        assert await step_rows(pool, pid) == SLOW_STEPS


async def test_a_fenced_out_runner_cannot_commit(orch: Orchestrator) -> None:
    pid = await services.start_process("tf_input", [{"size": 1}], orchestrator=orch)
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        while await status_of(orch, pid) != "suspended":
            await asyncio.sleep(0.01)
    await orch.store.pool.execute("UPDATE processes SET last_status = 'resumed' WHERE pid = $1", pid)
    claim = await orch.store.claims.claim(pid, statuses=["resumed"], owner="old", lease_ttl=0.01, user="x")
    assert claim is not None

    async def taken_over() -> bool:  # by this call or by the program's own sweeper, whichever comes first
        async with orch.store.transaction() as tx:
            await orch.store.take_over_expired(tx)
        token = await orch.store.pool.fetchval("SELECT fencing_token FROM processes WHERE pid = $1", pid)
        return bool(token > claim.token)

    await wait_until(taken_over, 10)
    written = await orch.store.steps.write(
        StepOutcome(
            pid=pid,
            token=claim.token,
            process_status="running",
            step_name="late",
            assignee="SYSTEM",
            failed_reason=None,
            traceback=None,
            step_status="success",
            state={},
            created_by="old",
            started_at=None,
            replace_stepid=None,
            stepid=uuid4(),
        )
    )
    assert written.accepted is False
    assert ("late", "success") not in await step_rows(orch.store.pool, pid)


async def test_lease_renewal_skips_a_row_being_written_instead_of_waiting(orch: Orchestrator) -> None:
    """A renewal that waited on a row lock held by a batch of step writes could close a deadlock cycle; it
    renews the rows it can take now and leaves the locked one to the next renewal."""
    pool = orch.store.pool
    workflow_id = await pool.fetchval(
        "INSERT INTO workflows (name, target, description) VALUES ('leased', 'SYSTEM', '') RETURNING workflow_id"
    )
    free, locked = uuid4(), uuid4()
    for pid in (free, locked):
        await pool.execute(
            "INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, assignee, lease_owner,"
            " lease_expires_at) VALUES ($1, $2, 'running', 'u', false, 'SYSTEM', 'me', now() + interval '1 second')",
            pid,
            workflow_id,
        )
    async with pool.acquire() as writer, writer.transaction():
        await writer.execute("SELECT 1 FROM processes WHERE pid = $1 FOR UPDATE", locked)
        await asyncio.wait_for(orch.store.claims.renew_leases("me", [free, locked], 3600), 30)
    leases = {
        r["pid"]: r["renewed"]
        for r in await pool.fetch(
            "SELECT pid, lease_expires_at > now() + interval '1 minute' AS renewed FROM processes WHERE pid = ANY($1)",
            [free, locked],
        )
    }
    assert leases == {free: True, locked: False}
    await orch.store.claims.renew_leases("me", [free, locked], 3600)
    assert await pool.fetchval(
        "SELECT bool_and(lease_expires_at > now() + interval '1 minute') FROM processes WHERE pid = ANY($1)",
        [free, locked],
    )
