"""Retention at run time: a prune as a loop of small batches, and the built-in task that runs it on a schedule.

Batches are short statements that lock only completed processes and skip locked ones (`persistence/retention.py`),
so a prune of millions of rows runs beside live traffic: no running process waits on it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from orchestrator.dsl.results import Process, Success
from orchestrator.dsl.schedules import Cron
from orchestrator.dsl.steps import Step, StepContext, done, init
from orchestrator.dsl.types import State
from orchestrator.dsl.workflow import Workflow
from orchestrator.persistence.database import Pool
from orchestrator.persistence.retention import Pruned, count_prunable, prune_batch

PRUNE_BATCH_SIZE = 1000
PRUNE_TASK = "task_prune_completed"


async def prune_completed(
    pool: Pool, older_than: timedelta, *, tasks_only: bool = False, dry_run: bool = False
) -> Pruned:
    """Delete (or with `dry_run` only count) completed processes last changed more than `older_than` ago."""
    before = datetime.now(UTC) - older_than
    if dry_run:
        return await count_prunable(pool, before, tasks_only=tasks_only)
    total = Pruned()
    while True:
        batch = await prune_batch(pool, before, tasks_only=tasks_only, batch=PRUNE_BATCH_SIZE)
        total.add(batch)
        if batch.processes < PRUNE_BATCH_SIZE:
            return total
        await asyncio.sleep(0)  # let the program's other work in between batches


def prune_task(pool: Pool, older_than: timedelta, *, tasks_only: bool, cron: str) -> Workflow:
    """The built-in task PRUNE_COMPLETED_OLDER_THAN registers: one step that prunes and records what it removed."""

    async def prune(state: State, ctx: StepContext) -> Process:
        pruned = await prune_completed(pool, older_than, tasks_only=tasks_only)
        removed = {"workflows": pruned.workflows, "tasks": pruned.tasks, "steps": pruned.steps}
        return Success({**state, "pruned": removed})

    steps = init >> Step("Prune completed processes", prune) >> done
    description = f"Delete completed {'tasks' if tasks_only else 'processes'} older than {older_than}"
    return Workflow(PRUNE_TASK, steps, description, is_task=True, schedules=(Cron(cron, name=PRUNE_TASK),))
