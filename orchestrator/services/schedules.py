"""Schedules through the Python API (REST and the CLI call these): create, change, delete, list.

A schedule starts its workflow with the given user inputs on each tick (`runtime/schedules.py` fires them). It is
checked when it is written: an unknown workflow is a WorkflowNotFoundError, a bad trigger a ScheduleError, and,
when this program has the workflow loaded, its authorize callback must let the user start it and the inputs
must fill its initial form (the form errors), so that a tick does not fail later on what could be known now.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import run_form
from orchestrator.dsl.schedules import parse_trigger
from orchestrator.dsl.types import SYSTEM_USER, State
from orchestrator.exceptions import NotAuthorizedError, ScheduleNotFoundError, WorkflowNotFoundError
from orchestrator.persistence import reads
from orchestrator.runtime.orchestrator import Orchestrator, current
from orchestrator.runtime.starting import form_pages
from orchestrator.services.processes import allowed


async def _workflow_id(orch: Orchestrator, workflow_name: str, workflow_id: UUID | None) -> UUID:
    known = {row["name"]: row["workflow_id"] for row in await reads.list_workflows(orch.store.pool)}
    found = known.get(workflow_name)
    if found is None or (workflow_id is not None and workflow_id != found):
        raise WorkflowNotFoundError(workflow_name if found is None else f"{workflow_name} (id {workflow_id})")
    return UUID(str(found))


async def _check_start(orch: Orchestrator, workflow_name: str, user_inputs: list[State], user_model: Any) -> None:
    wf = orch.registry.get(workflow_name)
    if wf is None:
        return  # loaded by another program: that program's ticks run the checks
    if not await allowed(wf.authorize_callback, user_model):
        raise NotAuthorizedError(f"User is not authorized to start '{workflow_name}' workflow")
    initial: State = {"process_id": uuid4(), "reporter": SYSTEM_USER, "workflow_name": workflow_name}
    if wf.initial_input_form is not None:
        run_form(wf.initial_input_form, initial, form_pages(user_inputs))


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "trigger_kwargs": row["trigger_kwargs"] or {}, "user_inputs": row["user_inputs"] or [{}]}


async def create_schedule(
    workflow_name: str,
    trigger: str,
    trigger_kwargs: dict[str, Any] | None = None,
    *,
    workflow_id: UUID | None = None,
    name: str | None = None,
    user_inputs: Sequence[State] | None = None,
    no_uncompleted_instance: bool = False,
    user_model: Any = None,
    orchestrator: Orchestrator | None = None,
) -> dict[str, Any]:
    """Create a schedule; it runs first at the trigger's first tick. Raises WorkflowNotFoundError, ScheduleError,
    NotAuthorizedError and the form errors; nothing is written when one is raised."""
    orch = orchestrator or current()
    kwargs = dict(trigger_kwargs or {})
    parsed = parse_trigger(trigger, kwargs)
    wf_id = await _workflow_id(orch, workflow_name, workflow_id)
    pages = [jsonutil.normalise(page) for page in (user_inputs if user_inputs is not None else [{}])]
    await _check_start(orch, workflow_name, pages, user_model)
    now = datetime.now(UTC)
    return _view(
        await orch.store.insert_schedule(
            name=name or workflow_name,
            workflow_id=wf_id,
            trigger=trigger,
            trigger_kwargs=jsonutil.normalise(kwargs),
            user_inputs=pages,
            no_uncompleted_instance=no_uncompleted_instance,
            next_run_at=parsed.first_run(now),
            created_at=now,
        )
    )


async def update_schedule(
    schedule_id: UUID,
    *,
    name: str | None = None,
    trigger: str | None = None,
    trigger_kwargs: dict[str, Any] | None = None,
    user_model: Any = None,
    orchestrator: Orchestrator | None = None,
) -> dict[str, Any]:
    """Rename a schedule or change its trigger (its ticks then count from now). Raises ScheduleNotFoundError,
    ScheduleError and NotAuthorizedError."""
    orch = orchestrator or current()
    row = await orch.store.get_schedule(schedule_id)
    if row is None:
        raise ScheduleNotFoundError(schedule_id)
    await _check_start(orch, row["workflow_name"], row["user_inputs"] or [{}], user_model)
    new_trigger = trigger or row["trigger"]
    kwargs = trigger_kwargs if trigger_kwargs is not None else (row["trigger_kwargs"] if trigger is None else {})
    now = datetime.now(UTC)
    retimed = trigger is not None or trigger_kwargs is not None
    next_run = parse_trigger(new_trigger, kwargs).first_run(now) if retimed else row["next_run_at"]
    updated = await orch.store.update_schedule(
        schedule_id,
        name=name or row["name"],
        trigger=new_trigger,
        trigger_kwargs=jsonutil.normalise(dict(kwargs)),
        next_run_at=next_run,
        created_at=now if retimed else row["created_at"],
    )
    if updated is None:
        raise ScheduleNotFoundError(schedule_id)
    return _view(updated)


async def delete_schedule(
    schedule_id: UUID, *, user_model: Any = None, orchestrator: Orchestrator | None = None
) -> None:
    """Delete a schedule (processes it started stay). Raises ScheduleNotFoundError and NotAuthorizedError."""
    orch = orchestrator or current()
    row = await orch.store.get_schedule(schedule_id)
    if row is None:
        raise ScheduleNotFoundError(schedule_id)
    wf = orch.registry.get(row["workflow_name"])
    if wf is not None and not await allowed(wf.authorize_callback, user_model):
        raise NotAuthorizedError(f"User is not authorized to start '{row['workflow_name']}' workflow")
    if not await orch.store.delete_schedule(schedule_id):
        raise ScheduleNotFoundError(schedule_id)


async def list_schedules(*, orchestrator: Orchestrator | None = None) -> list[dict[str, Any]]:
    """Every schedule with its `next_run_at`, `last_run_at` and the process its last tick started (`last_pid`)."""
    orch = orchestrator or current()
    return [_view(row) for row in await orch.store.list_schedules()]


async def get_schedule(schedule_id: UUID, *, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    orch = orchestrator or current()
    row = await orch.store.get_schedule(schedule_id)
    if row is None:
        raise ScheduleNotFoundError(schedule_id)
    return _view(row)
