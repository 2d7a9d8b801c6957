"""Retry policies, the engine's own retry of `retrystep`, and durable sleeps, against a real PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
import timeflows
from support.database import step_rows
from support.processes import ENGINE_SCRIPT
from support.waiting import wait_status, wait_until

from orchestrator import services
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings


async def start(orch: Orchestrator, key: str, inputs: list[dict[str, object]] | None = None) -> UUID:
    return await services.start_process(key, inputs or [{}], user="alice", orchestrator=orch)


async def test_a_step_failing_twice_is_retried_as_the_policy_says_and_then_succeeds(orch: Orchestrator) -> None:
    pid = await start(orch, "time_retry_policy")
    process = await wait_status(orch, pid, {"waiting"})
    assert process["attempt"] == 1 and process["next_attempt_at"] is not None
    timer = await orch.store.timer_of(pid)
    assert timer is not None and timer["kind"] == "retry" and timer["attempt"] == 1
    process = await wait_status(orch, pid, {"completed"}, timeout=15)
    times = timeflows.ATTEMPTS[str(pid)]
    assert len(times) == 3
    # initial_interval 0.5 s, backoff 2: the second attempt ≥ 0.5 s after the first, the third ≥ 1 s after it.
    assert times[1] - times[0] >= 0.5
    assert times[2] - times[1] >= 1.0
    assert process["current_state"]["flaky_done"] is True
    assert await orch.store.timer_of(pid) is None
    rows = await step_rows(orch.store.pool, pid)
    assert rows[-2:] == [("Flaky", "success"), ("Done", "complete")]
    assert ("Flaky", "waiting") in rows


async def test_the_last_attempts_failure_fails_the_process_with_its_error(orch: Orchestrator) -> None:
    pid = await start(orch, "time_retry_exhausted")
    process = await wait_status(orch, pid, {"failed"}, timeout=10)
    assert len(timeflows.ATTEMPTS[str(pid)]) == 2
    assert process["failed_reason"] == "attempt 2 failed"
    assert process["attempt"] == 2 and process["next_attempt_at"] is None
    assert await orch.store.timer_of(pid) is None


async def test_an_exception_outside_retry_on_fails_at_once(orch: Orchestrator) -> None:
    pid = await start(orch, "time_retry_on")
    process = await wait_status(orch, pid, {"failed"})
    assert len(timeflows.ATTEMPTS[str(pid)]) == 1
    assert "not a connection error" in process["failed_reason"]


@pytest.fixture
def quick_retry(settings: AppSettings) -> AppSettings:
    return settings.model_copy(update={"RETRY_WAITING_AFTER_SECONDS": 1.0})


async def test_a_retrystep_without_a_policy_is_retried_by_the_engine(quick_retry: AppSettings) -> None:
    async with Orchestrator(quick_retry) as orch:
        pid = await start(orch, "time_plain_retrystep")
        process = await wait_status(orch, pid, {"waiting"})
        assert await orch.store.timer_of(pid) is None
        assert process["next_attempt_at"] is None
        process = await wait_status(orch, pid, {"completed"}, timeout=15)
        times = timeflows.ATTEMPTS[str(pid)]
        assert len(times) == 2 and times[1] - times[0] >= 1.0


async def test_a_sleep_continues_at_its_due_time(orch: Orchestrator) -> None:
    pid = await start(orch, "time_sleep")
    process = await wait_status(orch, pid, {"waiting"})
    timer = await orch.store.timer_of(pid)
    assert timer is not None and timer["kind"] == "sleep"
    due = timer["due_at"]
    assert process["next_attempt_at"] == due
    process = await wait_status(orch, pid, {"completed"}, timeout=10)
    assert process["current_state"]["woke_at"] >= due.timestamp()
    assert "__sleep_until" not in process["current_state"]
    assert await step_rows(orch.store.pool, pid) == [
        ("Start", "success"),
        ("Nap", "success"),
        ("Nap - wait", "waiting"),
        ("Nap - wait", "success"),
        ("After sleep", "success"),
        ("Done", "complete"),
    ]


async def test_a_sleep_until_a_time_from_the_state_and_abort_while_sleeping(orch: Orchestrator) -> None:
    wake_at = datetime.now(UTC) + timedelta(hours=1)
    pid = await start(orch, "time_sleep_until", [{"wake_at": wake_at.isoformat()}])
    await wait_status(orch, pid, {"waiting"})
    timer = await orch.store.timer_of(pid)
    # The form's datetime is stored with whole seconds, as orchestrator-core's JSON encoding does.
    assert timer is not None and abs((timer["due_at"] - wake_at).total_seconds()) < 1
    await services.abort_process(pid, user="bob", orchestrator=orch)
    assert (await services.get_process(pid, orchestrator=orch))["last_status"] == "aborted"
    # Firing the timer of an aborted process does nothing.
    await orch.store.pool.execute("UPDATE process_timers SET due_at = now() WHERE pid = $1", pid)
    assert orch.timers is not None
    orch.timers.wake()
    await wait_until(lambda: _timer_gone(orch, pid), what="the timer to be fired")
    assert (await services.get_process(pid, orchestrator=orch))["last_status"] == "aborted"


async def _timer_gone(orch: Orchestrator, pid: UUID) -> bool:
    return await orch.store.timer_of(pid) is None


async def test_a_paused_engine_fires_no_timer_until_unpaused(orch: Orchestrator) -> None:
    pid = await start(orch, "time_sleep")
    await wait_status(orch, pid, {"waiting"})
    await services.set_engine_lock(True, orchestrator=orch)
    await orch.store.pool.execute("UPDATE process_timers SET due_at = now() WHERE pid = $1", pid)
    assert orch.timers is not None
    assert await orch.timers.fire_due_timers() == 0
    assert await orch.store.timer_of(pid) is not None
    await services.set_engine_lock(False, orchestrator=orch)
    orch.timers.wake()
    await wait_status(orch, pid, {"completed"}, timeout=10)


async def test_timers_coming_due_close_together_are_fired_together(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a firing the loop waits `coalesce` (0.1 s): timers due 10 ms apart fire in one or two batches, not one
    transaction each (as they did: 167 firings a second, in every program, with 10,000 sleepers over a minute)."""
    wake_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    pids = [await start(orch, "time_sleep_until", [{"wake_at": wake_at}]) for _ in range(8)]
    for pid in pids:
        await wait_status(orch, pid, {"waiting"})
    batches: list[int] = []
    fire = orch.store.fire_due_timers

    async def recording(tx: object, limit: int = 1000) -> object:
        refs = await fire(tx, limit)  # type: ignore[arg-type]
        if refs:
            batches.append(len(refs))
        return refs

    monkeypatch.setattr(orch.store, "fire_due_timers", recording)
    await orch.store.pool.execute(
        """UPDATE process_timers t SET due_at = now() + make_interval(secs => 0.3 + 0.01 * x.i)
             FROM (SELECT pid, row_number() OVER (ORDER BY pid) AS i FROM process_timers WHERE pid = ANY($1)) x
            WHERE t.pid = x.pid""",
        pids,
    )
    # The wake-up time the sleep step checks the timer against, moved with it (as `bench.timers` does).
    await orch.store.pool.execute(
        """UPDATE process_steps s SET state = jsonb_set(s.state, '{__sleep_until}', to_jsonb(t.due_at))
             FROM process_timers t WHERE s.pid = t.pid AND t.pid = ANY($1) AND s.state ? '__sleep_until'""",
        pids,
    )
    assert orch.timers is not None
    orch.timers.wake()
    for pid in pids:
        await wait_status(orch, pid, {"completed"}, timeout=10)
    assert sum(batches) == len(pids)
    assert len(batches) <= 2, batches


@pytest.fixture
def program(worker_env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _spawn(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    log = (tmp_path / "engine.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, str(ENGINE_SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=log, text=True
    )
    log.close()
    assert proc.stdout is not None
    assert "ready" in proc.stdout.readline(), (tmp_path / "engine.log").read_text()
    return proc


async def test_a_sleep_survives_a_sigkill_of_the_program_that_started_it(
    settings: AppSettings, worker_env: dict[str, str], tmp_path: Path, program: list[subprocess.Popen[str]]
) -> None:
    env = {**worker_env, "WORKFLOW_MODULES": "testflows,timeflows", "SWEEP_INTERVAL_SECONDS": "0.5"}
    first = _spawn(env, tmp_path, "time_sleep", "1")
    program.append(first)
    async with Orchestrator(settings, run_processes=False) as reader:
        pid = await wait_until_one_process(reader)
        await wait_status(reader, pid, {"waiting"})
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert (await services.get_process(pid, orchestrator=reader))["last_status"] == "waiting"
        program.append(_spawn(env, tmp_path))
        process = await wait_status(reader, pid, {"completed"}, timeout=15)
        assert process["current_state"]["woke_at"] > 0


async def wait_until_one_process(orch: Orchestrator) -> UUID:
    async def found() -> UUID | None:
        pid: UUID | None = await orch.store.pool.fetchval("SELECT pid FROM processes LIMIT 1")
        return pid

    await wait_until(found, what="the process to be inserted")
    pid = await found()
    assert pid is not None
    return pid
