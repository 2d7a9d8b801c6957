"""Retention: `orchestrator db prune`, the built-in prune task, and that a prune never waits on a held process."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg
from support.waiting import wait_status
from test_cli_and_migrations import run_cli

from orchestrator import services
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.runtime.retention import PRUNE_TASK
from orchestrator.settings import AppSettings

_BACKDATE = """UPDATE processes SET started_at = now() - interval '41 days',
                                     last_modified_at = now() - interval '40 days'
                WHERE pid = ANY($1::uuid[])"""


async def _ended(orch: Orchestrator, key: str, count: int) -> list[UUID]:
    pids = [await services.start_process(key, [{}], orchestrator=orch) for _ in range(count)]
    for pid in pids:
        await wait_status(orch, pid)
    return pids


async def _existing(orch: Orchestrator, pids: list[UUID]) -> set[UUID]:
    rows = await orch.store.pool.fetch("SELECT pid FROM processes WHERE pid = ANY($1::uuid[])", pids)
    return {r["pid"] for r in rows}


async def test_the_builtin_task_prunes_old_completed_processes_only(settings: AppSettings) -> None:
    settings = settings.model_copy(update={"PRUNE_COMPLETED_OLDER_THAN": timedelta(days=30)})
    async with Orchestrator(settings) as orch:
        [schedule] = await services.list_schedules(orchestrator=orch)
        assert schedule["workflow_name"] == PRUNE_TASK and schedule["trigger"] == "cron"
        old, recent = await _ended(orch, "tf_simple", 3), await _ended(orch, "tf_simple", 1)
        failed = await _ended(orch, "tf_task_fail", 1)
        await orch.store.pool.execute(_BACKDATE, [*old, *failed])
        pid = await services.start_process(PRUNE_TASK, [{}], orchestrator=orch)
        process = await wait_status(orch, pid)
        assert process["last_status"] == "completed", process
        assert process["current_state"]["pruned"] == {"workflows": 3, "tasks": 0, "steps": 12}
        assert await _existing(orch, [*old, *recent, *failed]) == {*recent, *failed}
        assert not await orch.store.pool.fetchval("SELECT count(*) FROM process_steps WHERE pid = ANY($1)", old)


async def test_cli_prune_dry_run_tasks_only_and_a_held_process(orch: Orchestrator, database_uri: str) -> None:
    workflows = await _ended(orch, "tf_simple", 2)
    tasks = await _ended(orch, "tf_slow_task", 1)
    await orch.store.pool.execute(_BACKDATE, [*workflows, *tasks])
    env = {"DATABASE_URI": database_uri, "WORKFLOW_MODULES": ""}

    dry = run_cli("db", "prune", "--completed-older-than", "30d", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 completed workflow process(es) and 1 task(s)" in dry.stdout
    assert await _existing(orch, workflows) == set(workflows)

    only_tasks = run_cli("db", "prune", "--completed-older-than", "30d", "--tasks-only", env=env)
    assert only_tasks.returncode == 0, only_tasks.stderr
    assert "deleted 0 completed workflow process(es) and 1 task(s)" in only_tasks.stdout
    assert await _existing(orch, [*workflows, *tasks]) == set(workflows)

    # A process another transaction holds is skipped, not waited for; the next prune takes it.
    holder = await asyncpg.connect(database_uri)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM processes WHERE pid = $1 FOR UPDATE", workflows[0])
            held = run_cli("db", "prune", "--completed-older-than", "30d", env=env, timeout=60)
            assert held.returncode == 0, held.stderr
            assert "deleted 1 completed workflow process(es)" in held.stdout
            assert await _existing(orch, workflows) == {workflows[0]}
    finally:
        await holder.close()
    again = run_cli("db", "prune", "--completed-older-than", "720h", env=env)
    assert "deleted 1 completed workflow process(es) and 0 task(s)" in again.stdout
    assert await _existing(orch, workflows) == set()


def test_cli_prune_bad_age_is_one_line_exit_2() -> None:
    result = run_cli("db", "prune", "--completed-older-than", "soon")
    assert result.returncode == 2
    assert "not an age: 'soon'" in result.stderr and "Traceback" not in result.stderr
