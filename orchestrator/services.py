"""The Python API for programs and for the HTTP layer: start, resume, abort and read processes.

Every function takes the `Orchestrator` to act on as `orchestrator=`; without it, the open one is used.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import structlog

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import EmptyForm, first_page_schema, run_form
from orchestrator.dsl.state import CALLBACK_RESULT_KEY, CALLBACK_TOKEN, REMOVE_KEYS
from orchestrator.dsl.steps import Authorizer, Step
from orchestrator.dsl.types import (
    FAILED_STATUSES,
    RESUMABLE_STATUSES,
    SYSTEM_USER,
    ProcessStatus,
    State,
    StepStatus,
)
from orchestrator.dsl.workflow import PredicateContext, RunPredicateFail, Workflow
from orchestrator.exceptions import (
    ActionNotAllowedError,
    CallbackTokenError,
    EngineLockedError,
    NotAuthorizedError,
    ProcessNotFoundError,
    ProcessStatusError,
    StartPredicateError,
)
from orchestrator.persistence.store import NewProcess, ProcessRef, StepRow, _rows
from orchestrator.runtime.orchestrator import Orchestrator, current

logger = structlog.get_logger(__name__)

ENGINE_RUNNING, ENGINE_PAUSING, ENGINE_PAUSED = "RUNNING", "PAUSING", "PAUSED"


def _orch(orchestrator: Orchestrator | None) -> Orchestrator:
    return orchestrator or current()


async def _allowed(callback: Authorizer | None, user_model: Any) -> bool:
    if callback is None:
        return True
    verdict = callback(user_model)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


def _pages(user_inputs: Sequence[State] | None) -> list[State]:
    """No input means one empty page (`[{}]`), as orchestrator-core; an explicit `[]` is an incomplete form."""
    return [{}] if user_inputs is None else list(user_inputs)


def _empty_form() -> type[EmptyForm]:
    return EmptyForm


async def start_process(
    workflow_key: str,
    user_inputs: Sequence[State] | None = None,
    *,
    user: str = SYSTEM_USER,
    user_model: Any = None,
    orchestrator: Orchestrator | None = None,
) -> UUID:
    """Create a process (status `created`) and dispatch it; return its id.

    Raises WorkflowNotFoundError, EngineLockedError, NotAuthorizedError, StartPredicateError and the form errors
    (FormValidationError, FormNotCompleteError, FormOverflowError); nothing is written when one is raised.
    """
    orch = _orch(orchestrator)
    wf = orch.registry.get_or_raise(workflow_key)
    if not await _allowed(wf.authorize_callback, user_model):
        raise NotAuthorizedError(f"User is not authorized to start '{workflow_key}' workflow")
    if wf.run_predicate is not None:
        verdict = wf.run_predicate(PredicateContext(wf, workflow_key))
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if isinstance(verdict, RunPredicateFail):
            raise StartPredicateError(verdict.message)
    pid = uuid4()
    initial: State = {
        "process_id": pid,
        "reporter": user,
        "workflow_name": workflow_key,
        "workflow_target": wf.target,
    }
    form_result = run_form(wf.initial_input_form or _empty_form, initial, _pages(user_inputs))
    state = jsonutil.normalise({**form_result, **initial})
    process = NewProcess(
        pid, orch.workflow_ids[workflow_key], workflow_key, wf.target.value, wf.is_task, user, initial_state=state
    )
    async with orch.store.transaction() as tx:
        # The engine lock is checked by the insert itself: no start slips past a pause.
        if not await orch.executor.create(tx, process):
            raise EngineLockedError
    logger.info("process created", process_id=str(pid), workflow=workflow_key, user=user)
    return pid


def _cleared(rows: list[StepRow]) -> list[StepRow]:
    return [row for row in rows if row.cleared]


def _next_step(wf: Workflow | None, rows: list[StepRow]) -> Step | None:
    if wf is None:
        return None
    index = len(_cleared(rows))
    return wf.steps[index] if index < len(wf.steps) else None


def _current_state(row: dict[str, Any], rows: list[StepRow], initial: State | None) -> State:
    if rows and rows[-1].status in (StepStatus.SUSPEND, StepStatus.AWAITING_CALLBACK):
        return rows[-1].state
    cleared = _cleared(rows)
    return cleared[-1].state if cleared else dict(initial or {})


def _auth_callback(wf: Workflow, rows: list[StepRow], status: str) -> tuple[Authorizer | None, str]:
    """orchestrator-core's selection over the steps passed plus the current one; applied to every resumable status."""
    passed = wf.steps[: len(_cleared(rows)) + 1]
    if status in FAILED_STATUSES:
        chosen = next(
            (
                s.retry_auth_callback or s.resume_auth_callback
                for s in reversed(passed)
                if (s.retry_auth_callback or s.resume_auth_callback) is not None
            ),
            None,
        )
        return chosen or wf.retry_auth_callback or wf.authorize_callback, "retry"
    chosen = next((s.resume_auth_callback for s in reversed(passed) if s.resume_auth_callback is not None), None)
    return chosen or wf.authorize_callback, "resume"


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
    orch = _orch(orchestrator)
    row = await orch.store.load(process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    status = row["last_status"]
    wf = orch.registry.get(row["workflow_name"])
    if wf is None:
        raise ProcessStatusError("This workflow cannot be resumed because it has been removed")
    rows = _rows(row["steps"])
    callback, action = _auth_callback(wf, rows, status)
    if not await _allowed(callback, user_model):
        raise NotAuthorizedError(f"User is not authorized to {action} step")
    if status not in RESUMABLE_STATUSES:
        raise ProcessStatusError(f"Resuming a {status} workflow is not possible")
    if await orch.store.engine_locked():
        raise EngineLockedError
    step = _next_step(wf, rows)
    waiting_for_input = (
        status in (ProcessStatus.SUSPENDED, ProcessStatus.RESUMED) and rows and rows[-1].status == (StepStatus.SUSPEND)
    )
    initial = await orch.store.latest_input(process_id, "initial_state") if not rows else None
    form = step.form if (waiting_for_input and step is not None) else None
    user_input = run_form(form, _current_state(row, rows, initial), _pages(user_inputs))
    async with orch.store.transaction() as tx:
        await orch.executor.resume(tx, ProcessRef(process_id, row["is_task"], row["workflow_target"], user))
        if not await orch.store.mark_resumed(
            tx, pid=process_id, seen_status=status, user=user, user_input=jsonutil.normalise(user_input)
        ):
            raise ProcessStatusError("The process changed status while it was being resumed; try again")
    logger.info("process resumed", process_id=str(process_id), user=user, previous_status=status)


async def abort_process(process_id: UUID, *, user: str = SYSTEM_USER, orchestrator: Orchestrator | None = None) -> None:
    """Abort a process in any status but `completed` (a no-op there). A runner still going is fenced out."""
    orch = _orch(orchestrator)
    if not await orch.store.abort(process_id, user):
        raise ProcessNotFoundError(process_id)
    logger.info("process aborted", process_id=str(process_id), user=user)


async def delete_process(process_id: UUID, *, orchestrator: Orchestrator | None = None) -> None:
    """Delete a task's process (only tasks may be deleted, as in orchestrator-core)."""
    orch = _orch(orchestrator)
    row = await orch.store.pool.fetchrow("SELECT is_task FROM processes WHERE pid = $1", process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    if not row["is_task"]:
        raise ActionNotAllowedError("Only tasks can be deleted")
    await orch.store.delete(process_id)


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
    }


async def get_process(process_id: UUID, *, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    """A process with `current_state`, `steps` (executed rows, then pending ones) and the `form` it waits on."""
    orch = _orch(orchestrator)
    row = await orch.store.load(process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    raw_steps = row.pop("steps") or []
    rows = _rows(raw_steps)
    wf = orch.registry.get(row["workflow_name"])
    initial = await orch.store.latest_input(process_id, "initial_state") if not rows else None
    current_state = _current_state(row, rows, initial)
    steps: list[dict[str, Any]] = []
    previous: State | None = None
    for step_row, raw in zip(rows, raw_steps, strict=True):
        steps.append(_step_view(step_row, previous, raw))
        if step_row.status in (StepStatus.SUCCESS, StepStatus.SKIPPED, StepStatus.COMPLETE):
            previous = step_row.state
    if wf is not None and row["last_status"] not in (ProcessStatus.COMPLETED, ProcessStatus.ABORTED):
        steps.extend({"name": s.name, "status": "pending"} for s in wf.steps[len(_cleared(rows)) :])
    step = _next_step(wf, rows)
    form = (
        first_page_schema(step.form, current_state)
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
        "current_state": current_state,
        "steps": steps,
        "form": form,
    }


async def _awaiting_row(orch: Orchestrator, process_id: UUID, token: str) -> tuple[dict[str, Any], StepRow]:
    row = await orch.store.load(process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    if row["last_status"] != ProcessStatus.AWAITING_CALLBACK:
        raise ProcessStatusError("This process is not in an awaiting state.")
    rows = _rows(row["steps"])
    last = rows[-1]
    if last.state.get(CALLBACK_TOKEN) != token:
        raise CallbackTokenError
    return row, last


async def continue_with_callback(
    process_id: UUID, token: str, payload: Any, *, orchestrator: Orchestrator | None = None
) -> None:
    """Store a callback's payload in the awaiting step's state and resume the process."""
    orch = _orch(orchestrator)
    row, last = await _awaiting_row(orch, process_id, token)
    if await orch.store.engine_locked():
        raise EngineLockedError
    key = last.state.get(CALLBACK_RESULT_KEY) or "callback_result"
    state = jsonutil.normalise({**last.state, key: payload})
    async with orch.store.transaction() as tx:
        await tx.conn.execute("UPDATE process_steps SET state = $2 WHERE stepid = $1", last.stepid, state)
        await orch.executor.resume(tx, ProcessRef(process_id, row["is_task"], row["workflow_target"], SYSTEM_USER))
        if not await orch.store.mark_resumed(
            tx, pid=process_id, seen_status=ProcessStatus.AWAITING_CALLBACK, user=SYSTEM_USER, user_input={}
        ):
            raise ProcessStatusError("This process is not in an awaiting state.")


async def report_callback_progress(
    process_id: UUID, token: str, progress: Any, *, orchestrator: Orchestrator | None = None
) -> None:
    """Record progress on the awaiting step, in place; it disappears at the next logged step."""
    orch = _orch(orchestrator)
    _, last = await _awaiting_row(orch, process_id, token)
    if await orch.store.engine_locked():
        raise EngineLockedError
    removed = sorted({*(last.state.get(REMOVE_KEYS) or []), "callback_progress"})
    state = jsonutil.normalise({**last.state, "callback_progress": progress, REMOVE_KEYS: removed})
    async with orch.store.transaction() as tx:
        await tx.conn.execute("UPDATE process_steps SET state = $2 WHERE stepid = $1", last.stepid, state)
        tx.on_commit(lambda: orch.store.events.publish({"pid": str(process_id), "progress": True}))


async def engine_status(*, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    orch = _orch(orchestrator)
    locked = await orch.store.engine_locked()
    running = await orch.store.running_count()
    status = ENGINE_RUNNING if not locked else (ENGINE_PAUSING if running else ENGINE_PAUSED)
    return {"global_lock": locked, "global_status": status, "running_processes": running}


async def set_engine_lock(locked: bool, *, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    """Pause (running processes stop before their next step) or unpause (everything waiting is dispatched)."""
    orch = _orch(orchestrator)
    async with orch.store.transaction() as tx:
        previous = await orch.store.set_engine_lock(tx, locked)
    if previous and not locked and orch.sweeper is not None:
        count = await orch.sweeper.dispatch_undispatched(older_than=0)
        logger.info("engine unpaused", dispatched=count)
    elif previous != locked:
        logger.info("engine paused" if locked else "engine unpaused")
    return await engine_status(orchestrator=orch)


async def resume_all(*, user: str = SYSTEM_USER, orchestrator: Orchestrator | None = None) -> int:
    """Retry every task in failed, waiting, api_unavailable or inconsistent_data; return how many were found."""
    orch = _orch(orchestrator)
    if await orch.store.engine_locked():
        raise EngineLockedError
    pids = [
        r["pid"]
        for r in await orch.store.pool.fetch(
            "SELECT pid FROM processes WHERE is_task AND last_status = ANY($1::text[])",
            [s.value for s in FAILED_STATUSES],
        )
    ]

    async def retry_each() -> None:
        for pid in pids:
            try:
                await resume_process(pid, [{}], user=user, orchestrator=orch)
            except Exception as exc:  # one failure does not stop the batch
                logger.warning("resume-all: process not resumed", process_id=str(pid), error=str(exc))

    task = asyncio.create_task(retry_each(), name="resume-all")
    _background.add(task)
    task.add_done_callback(_background.discard)
    return len(pids)


_background: set[asyncio.Task[None]] = set()


async def status_counts(*, orchestrator: Orchestrator | None = None) -> dict[str, dict[str, int]]:
    orch = _orch(orchestrator)
    rows = await orch.store.pool.fetch(
        "SELECT is_task, last_status, count(*) AS n FROM processes GROUP BY is_task, last_status"
    )
    counts: dict[str, dict[str, int]] = {"process_counts": {}, "task_counts": {}}
    for r in rows:
        counts["task_counts" if r["is_task"] else "process_counts"][r["last_status"]] = r["n"]
    return counts


async def worker_status(*, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    """From heartbeats and leases in PostgreSQL, never from the broker."""
    orch = _orch(orchestrator)
    stale = orch.settings.LEASE_TTL_SECONDS
    row = await orch.store.pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM workers WHERE heartbeat_at > now() - make_interval(secs => $1)) AS online,
               (SELECT count(*) FROM processes WHERE last_status IN ('created', 'resumed')) AS queued,
               (SELECT count(*) FROM processes WHERE last_status = 'running' AND lease_expires_at > now()) AS running
        """,
        stale,
    )
    assert row is not None
    executor_type = "threadpool" if orch.settings.EXECUTOR.value == "threadpool" else "dramatiq"
    return {
        "executor_type": executor_type,
        "number_of_workers_online": row["online"],
        "number_of_queued_jobs": row["queued"],
        "number_of_running_jobs": row["running"],
    }


async def queue_status(orch: Orchestrator) -> dict[str, dict[str, int]]:
    """Per Dramatiq queue: workers online and their capacity (from heartbeats), processes queued and running."""
    s = orch.settings
    queues = dict.fromkeys([s.WORKFLOWS_QUEUE, s.TASKS_QUEUE, *s.TARGET_QUEUES.values()])
    status = {q: {"workers_online": 0, "capacity": 0, "queued": 0, "running": 0} for q in queues}
    pool = orch.store.pool
    workers = await pool.fetch(
        """SELECT q AS queue, count(*) AS online, sum(capacity) AS capacity
             FROM workers, unnest(queues) AS q
            WHERE heartbeat_at > now() - make_interval(secs => $1) GROUP BY q""",
        s.LEASE_TTL_SECONDS,
    )
    for row in workers:
        entry = status.setdefault(row["queue"], {"workers_online": 0, "capacity": 0, "queued": 0, "running": 0})
        entry["workers_online"], entry["capacity"] = int(row["online"]), int(row["capacity"] or 0)
    processes = await pool.fetch(
        """SELECT p.is_task, w.target, p.last_status = 'running' AS running, count(*) AS n
             FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
            WHERE p.last_status IN ('created', 'resumed') OR (p.last_status = 'running' AND p.lease_expires_at > now())
            GROUP BY 1, 2, 3"""
    )
    for row in processes:
        queue = s.queue_for(is_task=row["is_task"], target=row["target"])
        entry = status.setdefault(queue, {"workers_online": 0, "capacity": 0, "queued": 0, "running": 0})
        entry["running" if row["running"] else "queued"] += int(row["n"])
    return status
