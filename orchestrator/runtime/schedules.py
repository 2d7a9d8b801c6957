"""Schedules at run time: the code-declared ones upserted at start-up, and due ticks fired by the timer loop.

Due ticks are fired in batches, each batch one transaction (`persistence/schedules.py`): claim the schedules,
move each to its first tick after now (ticks missed while nothing ran are coalesced into this one), and insert the
processes they start. A tick is
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
from orchestrator.persistence.schedules import CodeSchedule, ScheduleTick
from orchestrator.persistence.transaction import Transaction
from orchestrator.runtime.starting import check_run_predicate, insert_process, new_process

if TYPE_CHECKING:
    from orchestrator.runtime.orchestrator import Orchestrator

logger = structlog.get_logger(__name__)

FINISHED = (ProcessStatus.COMPLETED.value, ProcessStatus.ABORTED.value)

TICK_BATCH = 100
"""Ticks claimed and fired per transaction: a commit per tick bounds a program to a few dozen ticks a second."""


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
            claimed = await orch.store.claim_due_schedules(tx, list(orch.registry), TICK_BATCH)
            ticks = [await _fire(orch, tx, due) for due in claimed]
            await orch.store.advance_schedules(tx, ticks)
        fired = [t for t in ticks if t.pid is not None]
        for tick in fired:
            logger.info("schedule started a process", schedule=tick.schedule_name, process_id=str(tick.pid))
        started += len(fired)
        if len(claimed) < TICK_BATCH:
            return started


async def _fire(orch: Orchestrator, tx: Transaction, due: dict[str, Any]) -> ScheduleTick:
    """Start the process of a claimed tick (unless it is skipped) in `tx`; return the tick's outcome."""
    trigger = parse_trigger(due["trigger"], due["trigger_kwargs"])
    process = await _process_for(orch, due)
    if process is not None:
        await insert_process(orch, tx, process)
    return ScheduleTick(
        schedule_id=due["schedule_id"],
        schedule_name=due["name"],
        tick_at=due["next_run_at"],
        next_run_at=trigger.next_after(due["created_at"], due["now"]),
        pid=process.pid if process is not None else None,
    )


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
