"""Creating a process, shared by every way one is started: the Python API (`services.start_process`, after its
authorization) and the schedules, which start theirs inside the transaction that claims the tick.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import uuid4

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import EmptyForm, run_form
from orchestrator.dsl.types import State
from orchestrator.dsl.workflow import PredicateContext, RunPredicateFail, Workflow
from orchestrator.exceptions import EngineLockedError, StartPredicateError
from orchestrator.persistence.records import NewProcess
from orchestrator.persistence.transaction import Transaction

if TYPE_CHECKING:
    from orchestrator.runtime.orchestrator import Orchestrator


def form_pages(user_inputs: Sequence[State] | None) -> list[State]:
    """No input means one empty page (`[{}]`), as orchestrator-core; an explicit `[]` is an incomplete form."""
    return [{}] if user_inputs is None else list(user_inputs)


def _empty_form() -> type[EmptyForm]:
    return EmptyForm


async def check_run_predicate(wf: Workflow, workflow_key: str) -> None:
    """Raise StartPredicateError if the workflow's run predicate refuses a start now."""
    if wf.run_predicate is not None:
        verdict = wf.run_predicate(PredicateContext(wf, workflow_key))
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if isinstance(verdict, RunPredicateFail):
            raise StartPredicateError(verdict.message)


def new_process(
    orch: Orchestrator, wf: Workflow, workflow_key: str, user_inputs: Sequence[State] | None, user: str
) -> NewProcess:
    """The process to insert: its initial state is the initial form's result (raises the form errors)."""
    pid = uuid4()
    initial: State = {
        "process_id": pid,
        "reporter": user,
        "workflow_name": workflow_key,
        "workflow_target": wf.target,
    }
    form_result = run_form(wf.initial_input_form or _empty_form, initial, form_pages(user_inputs))
    state = jsonutil.normalise({**form_result, **initial})
    return NewProcess(
        pid, orch.workflow_ids[workflow_key], workflow_key, wf.target.value, wf.is_task, user, initial_state=state
    )


async def insert_process(orch: Orchestrator, tx: Transaction, process: NewProcess) -> None:
    """Insert and dispatch `process` as the last statement of `tx`; EngineLockedError if the engine is paused."""
    # A free run slot saves the claim's commit: the process is inserted already claimed; an outbox dispatch is
    # written by the insert itself. Otherwise it is dispatched first, as the insert must be the transaction's last
    # statement (one round trip alone).
    slot = orch.executor.reserve(tx, process.ref)
    if slot is None:
        await orch.executor.start(tx, process.ref)
    # The engine lock is checked by the insert itself: no start slips past a pause.
    if await orch.store.create_process(tx, process, slot) is None:
        raise EngineLockedError
