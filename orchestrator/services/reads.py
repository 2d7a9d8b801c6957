"""Reading processes and workflows: one process with its steps and form, listings, summaries and counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from orchestrator.dsl.forms import first_page_schema
from orchestrator.dsl.types import ProcessStatus, State, StepStatus
from orchestrator.exceptions import ProcessNotFoundError
from orchestrator.persistence import pages, reads, stats
from orchestrator.persistence.pages import PageQuery
from orchestrator.persistence.reads import Condition, Order, ProcessListing
from orchestrator.persistence.records import StepRow, step_rows
from orchestrator.runtime.orchestrator import Orchestrator, current
from orchestrator.services.position import cleared, current_state, waiting_branch, waiting_step


def _step_view(row: StepRow, previous: State | None, raw: dict[str, Any]) -> dict[str, Any]:
    delta = {k: v for k, v in row.state.items() if previous is None or previous.get(k) != v}
    return {
        "step_id": row.stepid,
        "stepid": row.stepid,
        "name": row.name,
        "status": row.status,
        "created_by": row.created_by,
        "executed": raw.get("completed_at"),
        "started": raw.get("started_at"),
        "completed": raw.get("completed_at"),
        "state": row.state,
        "state_delta": delta,
        "branch": row.branch,
    }


async def get_process(process_id: UUID, *, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    """A process with `current_state`, `steps` (executed rows, then pending ones) and the `form` it waits on."""
    orch = orchestrator or current()
    row = await orch.store.load(process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    raw_steps = row.pop("steps") or []
    rows = step_rows(raw_steps)
    wf = orch.registry.get(row["workflow_name"])
    initial = await orch.store.latest_input(process_id, "initial_state") if not rows else None
    waiting = waiting_branch(wf, rows, initial)
    state = current_state(rows, initial, waiting)
    steps: list[dict[str, Any]] = []
    previous: dict[str | None, State] = {}  # per branch: a branch's delta is against its own previous step
    for step_row, raw in zip(rows, raw_steps, strict=True):
        steps.append(_step_view(step_row, previous.get(step_row.branch), raw))
        if step_row.status in (StepStatus.SUCCESS, StepStatus.SKIPPED, StepStatus.COMPLETE):
            previous[step_row.branch] = step_row.state
    if wf is not None and row["last_status"] not in (ProcessStatus.COMPLETED, ProcessStatus.ABORTED):
        steps.extend({"name": s.name, "status": "pending"} for s in wf.steps[len(cleared(rows)) :])
    step = waiting_step(wf, rows, waiting)
    form = (
        first_page_schema(step.form, state)
        if step is not None and step.form is not None and row["last_status"] == ProcessStatus.SUSPENDED
        else None
    )
    return {
        "process_id": row["pid"],
        "workflow_id": row["workflow_id"],
        "workflow_name": row["workflow_name"],
        "workflow_target": row["workflow_target"],
        "is_task": row["is_task"],
        "created_by": row["created_by"],
        "failed_reason": row["failed_reason"],
        "traceback": row["traceback"],
        "started_at": row["started_at"],
        "last_modified_at": row["last_modified_at"],
        "last_status": row["last_status"],
        "last_step": row["last_step"],
        "assignee": row["assignee"],
        "note": row["note"],
        "current_state": state,
        "steps": steps,
        "form": form,
        "attempt": _attempt(rows),
        "next_attempt_at": row["next_attempt_at"],
        "schedule_id": row["schedule_id"],
    }


def _attempt(rows: list[StepRow]) -> int | None:
    """The attempt number a retry policy recorded in the last row (a waiting or failed step), if any."""
    if rows and rows[-1].status in (StepStatus.WAITING, StepStatus.FAILED):
        attempt = rows[-1].state.get("attempt")
        return attempt if isinstance(attempt, int) else None
    return None


async def list_processes(
    conditions: Sequence[Condition] = (),
    orders: Sequence[Order] = (),
    window: tuple[int, int] | None = None,
    *,
    after: Sequence[Any] | None = None,
    total: bool = True,
    orchestrator: Orchestrator | None = None,
) -> ProcessListing:
    """Processes (without steps, state and form) matching every condition, in order (newest first by default).
        With `window=(start, end)`: rows [start, end), the total, and where the next page starts if more follow
        (`next_position`). With `after` (an earlier page's `next_position`, same conditions and order) and a window:
        the rows after that position, no total; every such page costs what the first does. `total=False` leaves the
    total out of a window's answer (it costs a plan, or a count of up to 10,000 rows). Raises QueryError for
        what cannot be applied."""
    orch = orchestrator or current()
    return await reads.list_processes(orch.store.pool, conditions, orders, window, after, total=total)


async def process_page(
    query: PageQuery, *, orchestrator: Orchestrator | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """One page of processes for people (keyset paging, indexed filters, no total): its rows and whether more
    follow."""
    orch = orchestrator or current()
    return await pages.process_page(orch.store.pool, query)


async def process_summary(process_id: UUID, *, orchestrator: Orchestrator | None = None) -> dict[str, Any] | None:
    """`last_status`, `last_step` and `workflow_name` of a process, without loading its steps; None if not found."""
    orch = orchestrator or current()
    return await reads.process_summary(orch.store.pool, process_id)


async def status_counts(*, orchestrator: Orchestrator | None = None) -> dict[str, dict[str, int]]:
    """`process_counts` and `task_counts`, each by status; only statuses that occur."""
    orch = orchestrator or current()
    counts: dict[str, dict[str, int]] = {"process_counts": {}, "task_counts": {}}
    for is_task, status, n in await stats.status_counts(orch.store.pool):
        counts["task_counts" if is_task else "process_counts"][status] = n
    return counts


def _with_steps(orch: Orchestrator, row: dict[str, Any]) -> dict[str, Any]:
    wf = orch.registry.get(row["name"])
    steps = [{"name": name} for name in wf.step_names] if wf is not None else None
    return {**row, "key": row["name"], "steps": steps}


async def list_workflows(*, orchestrator: Orchestrator | None = None) -> list[dict[str, Any]]:
    """Every workflow not deleted, by key, with the step names this program's code gives it (None if unknown)."""
    orch = orchestrator or current()
    return [_with_steps(orch, row) for row in await reads.list_workflows(orch.store.pool)]


async def get_workflow(workflow_id: UUID, *, orchestrator: Orchestrator | None = None) -> dict[str, Any] | None:
    """A workflow as `list_workflows` gives it; None if there is none (or it was deleted)."""
    orch = orchestrator or current()
    row = await reads.get_workflow(orch.store.pool, workflow_id)
    return _with_steps(orch, row) if row is not None else None
