"""Schedules at run time: the code-declared ones upserted at start-up, and due ticks fired by the timer loop.

Each tick is one transaction (`persistence/schedules.py`): claim the schedule, move it to the first tick after
now (ticks missed while nothing ran are coalesced into this one), and insert the process it starts. A tick is
skipped, and the schedule still moved on, when `no_uncompleted_instance` is set and the process of its previous
tick has not finished, or when the start is refused (form, run predicate), as orchestrator-core's scheduler logs
and skips such runs. A process started by a schedule is created by `schedule:<name>` and linked to it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.dsl import jsonutil
from orchestrator.dsl.schedules import parse_trigger
from orchestrator.dsl.types import ProcessStatus
from orchestrator.persistence.records import NewProcess
from orchestrator.persistence.schedules import CodeSchedule
from orchestrator.runtime.starting import check_run_predicate, insert_process, new_process

if TYPE_CHECKING:
    from orchestrator.runtime.orchestrator import Orchestrator

logger = structlog.get_logger(__name__)

FINISHED = (ProcessStatus.COMPLETED.value, ProcessStatus.ABORTED.value)


def schedule_user(name: str) -> str:
    """`created_by` of the processes a schedule starts."""
    return f"schedule:{name}"[:255]


async def upsert_code_schedules(orch: Orchestrator) -> None:
    now = datetime.now(UTC)
    declared = [
        CodeSchedule(
            name=s.name_for(wf.name),
            workflow_id=orch.workflow_ids[wf.name],
            trigger=s.trigger,
            trigger_kwargs=jsonutil.normalise(dict(s.trigger_kwargs)),
            user_inputs=[jsonutil.normalise(page) for page in s.user_inputs],
            no_uncompleted_instance=s.no_uncompleted_instance,
            first_run=parse_trigger(s.trigger, s.trigger_kwargs).first_run(now),
            created_at=now,
        )
        for wf in orch.registry.values()
        for s in wf.schedules
    ]
    await orch.store.upsert_code_schedules(declared, [orch.workflow_ids[name] for name in orch.registry])


async def fire_due_schedules(orch: Orchestrator) -> int:
    """Fire every due tick of the schedules of workflows this program runs; return how many started a process."""
    started = 0
    while True:
        async with orch.store.transaction() as tx:
            due = await orch.store.claim_due_schedule(tx, list(orch.registry))
            if due is None:
                return started
            trigger = parse_trigger(due["trigger"], due["trigger_kwargs"])
            following = trigger.next_after(due["created_at"], due["now"])
            process = await _process_for(orch, due)
            await orch.store.advance_schedule(tx, due["schedule_id"], following, process.pid if process else None)
            if process is not None:
                await orch.store.record_schedule_run(
                    tx, process.pid, due["schedule_id"], due["name"], due["next_run_at"]
                )
                await insert_process(orch, tx, process)
                started += 1
        if process is not None:
            logger.info("schedule started a process", schedule=due["name"], process_id=str(process.pid))


async def _process_for(orch: Orchestrator, due: dict[str, Any]) -> NewProcess | None:
    """The process this tick starts, or None (logged) if the tick is skipped."""
    if due["no_uncompleted_instance"] and due["last_status"] is not None and due["last_status"] not in FINISHED:
        logger.info("schedule tick skipped: its previous process is not finished", schedule=due["name"])
        return None
    key = due["workflow_name"]
    wf = orch.registry[key]
    try:
        await check_run_predicate(wf, key)
        return new_process(orch, wf, key, due["user_inputs"], schedule_user(due["name"]))
    except Exception as exc:  # a refused start skips this tick only (orchestrator-core logs and skips it too)
        logger.warning("schedule tick skipped: the start was refused", schedule=due["name"], error=str(exc))
        return None
