"""Start, resume, abort and delete processes, and edit their note."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

import structlog

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import run_form
from orchestrator.dsl.steps import Authorizer
from orchestrator.dsl.types import FAILED_STATUSES, RESUMABLE_STATUSES, SYSTEM_USER, ProcessStatus, State, StepStatus
from orchestrator.dsl.workflow import Workflow
from orchestrator.exceptions import (
    ActionNotAllowedError,
    EngineLockedError,
    NotAuthorizedError,
    ProcessNotFoundError,
    ProcessStatusError,
    WorkflowNotLoadedError,
)
from orchestrator.persistence import edits, reads
from orchestrator.persistence.records import ProcessRef, StepRow, step_rows
from orchestrator.runtime.orchestrator import Orchestrator, current
from orchestrator.runtime.starting import check_run_predicate, form_pages, insert_process, new_process
from orchestrator.services.position import cleared, current_state, waiting_branch, waiting_step

logger = structlog.get_logger(__name__)

ResumeAction = Literal["retry", "resume"]


async def allowed(callback: Authorizer | None, user_model: Any) -> bool:
    if callback is None:
        return True
    verdict = callback(user_model)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


async def _refuse_if_not_loaded(orch: Orchestrator, workflow_key: str) -> None:
    """A key the database knows but this program's registry lacks: its module is not loaded here."""
    if any(row["name"] == workflow_key for row in await reads.list_workflows(orch.store.pool)):
        raise WorkflowNotLoadedError(workflow_key)


async def start_process(
    workflow_key: str,
    user_inputs: Sequence[State] | None = None,
    *,
    user: str = SYSTEM_USER,
    user_model: Any = None,
    orchestrator: Orchestrator | None = None,
) -> UUID:
    """Create a process (status `created`) and dispatch it; return its id.

    Raises WorkflowNotFoundError (WorkflowNotLoadedError when the database knows the key), EngineLockedError,
    NotAuthorizedError, StartPredicateError and the form errors (FormValidationError, FormNotCompleteError,
    FormOverflowError); nothing is written when one is raised.
    """
    orch = orchestrator or current()
    if workflow_key not in orch.registry:
        await _refuse_if_not_loaded(orch, workflow_key)
    wf = orch.registry.get_or_raise(workflow_key)
    if not await allowed(wf.authorize_callback, user_model):
        raise NotAuthorizedError(f"User is not authorized to start '{workflow_key}' workflow")
    await check_run_predicate(wf, workflow_key)
    process = new_process(orch, wf, workflow_key, user_inputs, user)
    async with orch.store.transaction() as tx:
        await insert_process(orch, tx, process)
    await _let_the_runner_go_first()
    pid = process.pid
    logger.info("process created", process_id=str(pid), workflow=workflow_key, user=user)
    return pid


async def _let_the_runner_go_first() -> None:
    """A process claimed by its own commit is queued to a run slot (threadpool): yield once, so that the slot
    sends its first step's write before this request logs and answers, which then overlap that round trip."""
    await asyncio.sleep(0)


def _resume_action(status: str) -> ResumeAction:
    return "retry" if status in FAILED_STATUSES else "resume"


async def resume_action(process_id: UUID, *, orchestrator: Orchestrator | None = None) -> ResumeAction:
    """What resuming this process would do now: `retry` a failed step (failed, waiting, api_unavailable,
    inconsistent_data) or `resume` otherwise; the question an app's own authorization asks before a resume."""
    orch = orchestrator or current()
    summary = await reads.process_summary(orch.store.pool, process_id)
    if summary is None:
        raise ProcessNotFoundError(process_id)
    return _resume_action(summary["last_status"])


def _auth_callback(wf: Workflow, rows: list[StepRow], action: ResumeAction) -> Authorizer | None:
    """orchestrator-core's selection over the steps passed plus the current one; applied to every resumable status."""
    passed = wf.steps[: len(cleared(rows)) + 1]
    if action == "retry":
        chosen = next(
            (
                s.retry_auth_callback or s.resume_auth_callback
                for s in reversed(passed)
                if (s.retry_auth_callback or s.resume_auth_callback) is not None
            ),
            None,
        )
        return chosen or wf.retry_auth_callback or wf.authorize_callback
    chosen = next((s.resume_auth_callback for s in reversed(passed) if s.resume_auth_callback is not None), None)
    return chosen or wf.authorize_callback


async def resume_process(
    process_id: UUID,
    user_inputs: Sequence[State] | None = None,
    *,
    user: str = SYSTEM_USER,
    user_model: Any = None,
    orchestrator: Orchestrator | None = None,
) -> None:
    """Validate the input of a resumable process, mark it `resumed` and dispatch it.

    A suspended process validates `user_inputs` against the waiting step's form; a failed one is retried from
    the failed step. Form errors write nothing. Two racing resumes: one wins, the other gets ProcessStatusError.
    """
    orch = orchestrator or current()
    row = await orch.store.load(process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    status = row["last_status"]
    wf = orch.registry.get(row["workflow_name"])
    if wf is None:
        raise ProcessStatusError("This workflow cannot be resumed because it has been removed")
    rows = step_rows(row["steps"])
    action = _resume_action(status)
    if not await allowed(_auth_callback(wf, rows, action), user_model):
        raise NotAuthorizedError(f"User is not authorized to {action} step")
    if status not in RESUMABLE_STATUSES:
        raise ProcessStatusError(f"Resuming a {status} workflow is not possible")
    initial = await orch.store.latest_input(process_id, "initial_state") if not rows else None
    waiting = waiting_branch(wf, rows, initial)
    step = waiting_step(wf, rows, waiting)
    last = waiting.row if waiting is not None else next((r for r in reversed(rows) if r.branch is None), None)
    waiting_for_input = (
        status in (ProcessStatus.SUSPENDED, ProcessStatus.RESUMED)
        and last is not None
        and last.status == StepStatus.SUSPEND
    )
    form = step.form if (waiting_for_input and step is not None) else None
    user_input = run_form(form, current_state(rows, initial, waiting), form_pages(user_inputs))
    async with orch.store.transaction() as tx:
        # A free run slot saves the claim's statement and the reload of the steps: the process goes straight to
        # `running` under this runner's lease (not while awaiting a callback: progress reports change its step
        # state in place, so the rows read above could be stale).
        lease = orch.executor.lease_slot(tx) if status != ProcessStatus.AWAITING_CALLBACK else None
        if lease is None:
            await orch.executor.resume(tx, ProcessRef(process_id, row["is_task"], row["workflow_target"], user))
        # The engine lock is checked by the resume statement itself: no resume slips past a pause.
        if not await orch.store.mark_resumed(
            tx,
            pid=process_id,
            seen_status=status,
            seen_token=row["fencing_token"],
            user=user,
            user_input=jsonutil.normalise(user_input),
            lease=lease,
            rows=rows,
        ):
            if await orch.store.engine_locked():
                raise EngineLockedError
            raise ProcessStatusError("The process changed status while it was being resumed; try again")
    await _let_the_runner_go_first()
    logger.info("process resumed", process_id=str(process_id), user=user, previous_status=status)


async def abort_process(process_id: UUID, *, user: str = SYSTEM_USER, orchestrator: Orchestrator | None = None) -> None:
    """Abort a process in any status but `completed` (a no-op there). A runner still going is fenced out."""
    orch = orchestrator or current()
    if not await orch.store.abort(process_id, user):
        raise ProcessNotFoundError(process_id)
    logger.info("process aborted", process_id=str(process_id), user=user)


async def delete_process(process_id: UUID, *, orchestrator: Orchestrator | None = None) -> None:
    """Delete a task's process (only tasks may be deleted, as in orchestrator-core); live streams see it `deleted`."""
    orch = orchestrator or current()
    is_task = await reads.is_task(orch.store.pool, process_id)
    if is_task is None:
        raise ProcessNotFoundError(process_id)
    if not is_task:
        raise ActionNotAllowedError("Only tasks can be deleted")
    await orch.store.delete(process_id)
    orch.store.events.publish({"pid": str(process_id), "status": "deleted"})


async def set_note(process_id: UUID, note: str | None, *, orchestrator: Orchestrator | None = None) -> None:
    """Change a process's note (None clears it)."""
    orch = orchestrator or current()
    if not await edits.set_note(orch.store.pool, process_id, note):
        raise ProcessNotFoundError(process_id)
    orch.store.events.publish({"pid": str(process_id), "note": True})
