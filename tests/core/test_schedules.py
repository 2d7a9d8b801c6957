"""Schedules in-process: declared in code, batches of ticks fired once by two programs, the missed-tick rule,
`no_uncompleted_instance`, the CLI."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from uuid import UUID

import pytest
import timeflows
from support.processes import subprocess_env
from support.waiting import wait_status, wait_until

from orchestrator import Cron, Interval, services
from orchestrator.dsl.workflow import Workflow, WorkflowRegistry
from orchestrator.exceptions import ScheduleError
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.runtime.schedules import TICK_BATCH
from orchestrator.settings import AppSettings


async def _processes_of(orch: Orchestrator, schedule_id: UUID) -> list[UUID]:
    rows = await orch.store.pool.fetch(
        "SELECT pid FROM schedule_runs WHERE schedule_id = $1 ORDER BY tick_at", schedule_id
    )
    return [r["pid"] for r in rows]


async def test_a_schedule_declared_in_code_is_upserted_and_fires(settings: AppSettings) -> None:
    tick = Workflow("time_code_tick", timeflows.time_tick.steps, is_task=True, schedules=(Interval(1, name="code"),))
    registry = WorkflowRegistry({"time_code_tick": tick})
    async with Orchestrator(settings, registry=registry) as orch:
        [row] = await services.list_schedules(orchestrator=orch)
        assert row["source"] == "code" and row["name"] == "code" and row["trigger"] == "interval"

        async def started() -> list[UUID]:
            return await _processes_of(orch, row["schedule_id"])

        await wait_until(started, what="the code schedule's first tick")
        pid = (await started())[0]
        process = await wait_status(orch, pid, {"completed"})
        assert process["created_by"] == "schedule:code" and process["schedule_id"] == row["schedule_id"]
    # Declared no more: the next start-up drops it (a restart with it unchanged keeps its next run).
    registry["time_code_tick"] = Workflow("time_code_tick", timeflows.time_tick.steps, is_task=True)
    async with Orchestrator(settings, registry=registry, run_processes=False) as orch:
        assert await services.list_schedules(orchestrator=orch) == []


async def test_ticks_missed_while_nothing_ran_run_once_on_return(settings: AppSettings) -> None:
    async with Orchestrator(settings, run_processes=False) as offline:  # runs no timer loop: "everything down"
        row = await services.create_schedule("time_tick", "interval", {"hours": 1}, orchestrator=offline)
        await offline.store.pool.execute(
            "UPDATE schedules SET created_at = now() - interval '5 hours 1 minute',"
            " next_run_at = now() - interval '4 hours 1 minute' WHERE schedule_id = $1",
            row["schedule_id"],
        )
    async with Orchestrator(settings) as orch:

        async def started() -> list[UUID]:
            return await _processes_of(orch, row["schedule_id"])

        await wait_until(started, what="the missed ticks to run")
        await wait_status(orch, (await started())[0], {"completed"})
        after = await services.get_schedule(row["schedule_id"], orchestrator=orch)
        assert await started() == [(await started())[0]]  # five missed ticks, one process
        expected = row["created_at"] - timedelta(hours=5, minutes=1) + timedelta(hours=6)
        assert abs((after["next_run_at"] - expected).total_seconds()) < 1


async def test_two_programs_fire_more_due_ticks_than_a_batch_holds_once_each(settings: AppSettings) -> None:
    """Two timer loops claim batches of the same due schedules: every tick starts exactly one process."""
    ticks = 3
    async with Orchestrator(settings) as one, Orchestrator(settings) as two:
        for i in range(TICK_BATCH + 50):
            await services.create_schedule("time_tick", "interval", {"seconds": 1}, name=f"b{i}", orchestrator=one)

        async def every_schedule_ticked() -> bool:
            least = await two.store.pool.fetchval(
                "SELECT min(n) FROM (SELECT count(r.pid) AS n FROM schedules s"
                " LEFT JOIN schedule_runs r USING (schedule_id) GROUP BY s.schedule_id) c"
            )
            return bool(least >= ticks)

        await wait_until(every_schedule_ticked, timeout=60, what=f"{ticks} ticks of every schedule")
        await one.store.pool.execute("DELETE FROM schedules")
    async with Orchestrator(settings, run_processes=False) as reader:
        runs = await reader.store.pool.fetch("SELECT schedule_id, tick_at FROM schedule_runs")
        started = await reader.store.pool.fetchval("SELECT count(*) FROM processes WHERE created_by LIKE 'schedule:%'")
    assert len({(r["schedule_id"], r["tick_at"]) for r in runs}) == len(runs), "a tick started two processes"
    assert started == len(runs) >= (TICK_BATCH + 50) * ticks


async def test_no_uncompleted_instance_skips_ticks_while_the_previous_process_runs(orch: Orchestrator) -> None:
    row = await services.create_schedule(
        "time_tick_held", "interval", {"seconds": 0.5}, no_uncompleted_instance=True, orchestrator=orch
    )
    schedule_id = row["schedule_id"]

    async def started() -> list[UUID]:
        return await _processes_of(orch, schedule_id)

    await wait_until(started, what="the first tick")
    first = (await started())[0]
    await wait_status(orch, first, {"suspended"})
    last_run = (await services.get_schedule(schedule_id, orchestrator=orch))["last_run_at"]

    async def skipped_twice() -> bool:
        now = (await services.get_schedule(schedule_id, orchestrator=orch))["last_run_at"]
        return bool((now - last_run).total_seconds() >= 1.0)

    await wait_until(skipped_twice, what="later ticks to be skipped")
    assert await started() == [first]
    await services.resume_process(first, [{"go": True}], orchestrator=orch)
    await wait_status(orch, first, {"completed"})
    await wait_until(lambda: _more_than_one(orch, schedule_id), what="a tick after the process finished")


async def _more_than_one(orch: Orchestrator, schedule_id: UUID) -> bool:
    return len(await _processes_of(orch, schedule_id)) > 1


async def test_a_date_schedule_runs_once(orch: Orchestrator) -> None:
    row = await services.create_schedule(
        "time_tick", "date", {"run_date": "2020-01-01T00:00:00+00:00"}, name="once", orchestrator=orch
    )

    async def started() -> list[UUID]:
        return await _processes_of(orch, row["schedule_id"])

    await wait_until(started, what="the date schedule to run")
    await wait_status(orch, (await started())[0], {"completed"})
    after = await services.get_schedule(row["schedule_id"], orchestrator=orch)
    assert after["next_run_at"] is None and len(await started()) == 1


@pytest.mark.parametrize(
    ("trigger", "kwargs", "message"),
    [
        ("weekly", {}, "Invalid trigger"),
        ("interval", {}, "positive interval"),
        ("interval", {"seconds": "soon"}, "must be numbers"),
        ("interval", {"fortnights": 1}, "Unknown argument"),
        ("cron", {"expression": "61 * * * *"}, "Invalid cron expression"),
        ("cron", {"hour": 3, "timezone": "Mars/Olympus"}, "Unknown time zone"),
        ("cron", {"day_of_week": "0-4"}, "use names"),
        ("date", {}, "needs run_date"),
        ("date", {"run_date": "tomorrow"}, "ISO 8601"),
    ],
)
async def test_bad_triggers_are_refused_with_a_clear_error(
    orch: Orchestrator, trigger: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ScheduleError, match=message):
        await services.create_schedule("time_tick", trigger, kwargs, orchestrator=orch)
    assert await services.list_schedules(orchestrator=orch) == []


def test_cron_fields_follow_apscheduler_and_code_declarations_are_checked() -> None:
    from orchestrator.dsl.schedules import parse_trigger

    assert parse_trigger("cron", {"hour": 3}).cron == "0 3 * * *"
    assert parse_trigger("cron", {"minute": "*/5"}).cron == "*/5 * * * *"
    assert parse_trigger("cron", {"day_of_week": 0, "hour": 9}).cron == "0 9 * * mon"  # APScheduler: 0 = Monday
    with pytest.raises(ScheduleError):
        Cron("not a cron")


def _cli(settings: AppSettings, *args: str) -> subprocess.CompletedProcess[str]:
    full = {**subprocess_env(str(settings.DATABASE_URI)), "WORKFLOW_MODULES": "timeflows"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "schedules", *args], env=full, capture_output=True, text=True
    )


async def test_cli_adds_lists_and_removes_schedules_with_clear_errors(settings: AppSettings) -> None:
    added = _cli(settings, "add", "time_tick", "--cron", "0 3 * * *", "--name", "nightly")
    assert added.returncode == 0, added.stderr
    schedule_id = added.stdout.split()[1]
    listed = _cli(settings, "list")
    assert "nightly" in listed.stdout and "time_tick" in listed.stdout and "03:00:00" in listed.stdout
    bad = _cli(settings, "add", "time_tick", "--cron", "0 25 * * *")
    assert bad.returncode == 2 and "Invalid cron expression" in bad.stderr and "Traceback" not in bad.stderr
    unknown = _cli(settings, "add", "no_such_workflow", "--interval", "60")
    assert unknown.returncode == 2 and "no_such_workflow" in unknown.stderr
    not_uuid = _cli(settings, "remove", "nope")
    assert not_uuid.returncode == 2 and "not a schedule id" in not_uuid.stderr
    removed = _cli(settings, "remove", schedule_id)
    assert removed.returncode == 0, removed.stderr
    again = _cli(settings, "remove", schedule_id)
    assert again.returncode == 2 and "not found" in again.stderr
