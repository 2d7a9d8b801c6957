"""Where a process stands in its workflow, from its step rows: the steps cleared, the next one, the current state,
and, inside a fork, the first branch that waits."""

from __future__ import annotations

from orchestrator.dsl.steps import Step
from orchestrator.dsl.types import State, StepStatus
from orchestrator.dsl.workflow import Workflow
from orchestrator.persistence.records import StepRow
from orchestrator.runtime.branches import WaitingBranch, first_waiting, scope


def cleared(rows: list[StepRow]) -> list[StepRow]:
    """The cleared rows of the workflow's own steps (a branch's rows count inside its fork only)."""
    return [row for row in rows if row.cleared and row.branch is None]


def next_step(wf: Workflow | None, rows: list[StepRow]) -> Step | None:
    if wf is None:
        return None
    index = len(cleared(rows))
    return wf.steps[index] if index < len(wf.steps) else None


def waiting_branch(wf: Workflow | None, rows: list[StepRow], initial: State | None) -> WaitingBranch | None:
    """The first branch (in branch order) of the fork in flight whose step waits for input or a callback."""
    step = next_step(wf, rows)
    if step is None or step.fork is None:
        return None
    own, inflight = scope(rows, None)
    if not inflight:
        return None
    done = [row for row in own if row.cleared]
    return first_waiting(step.fork, done[-1].state if done else dict(initial or {}), inflight, None)


def waiting_step(wf: Workflow | None, rows: list[StepRow], waiting: WaitingBranch | None) -> Step | None:
    """The step a suspended process waits in: a branch's step, else the workflow's next step."""
    if waiting is not None:
        return waiting.steps[waiting.step_index]
    return next_step(wf, rows)


def current_state(rows: list[StepRow], initial: State | None, waiting: WaitingBranch | None = None) -> State:
    """The state the next step gets: a waiting step's own, else the last cleared step's, else the initial state."""
    if waiting is not None:
        return waiting.row.state
    own = [row for row in rows if row.branch is None]
    if own and own[-1].status in (StepStatus.SUSPEND, StepStatus.AWAITING_CALLBACK):
        return own[-1].state
    done = cleared(rows)
    return done[-1].state if done else dict(initial or {})
