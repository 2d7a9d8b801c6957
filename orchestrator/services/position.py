"""Where a process stands in its workflow, from its step rows: the steps cleared, the next one, the current state."""

from __future__ import annotations

from orchestrator.dsl.steps import Step
from orchestrator.dsl.types import State, StepStatus
from orchestrator.dsl.workflow import Workflow
from orchestrator.persistence.store import StepRow


def cleared(rows: list[StepRow]) -> list[StepRow]:
    return [row for row in rows if row.cleared]


def next_step(wf: Workflow | None, rows: list[StepRow]) -> Step | None:
    if wf is None:
        return None
    index = len(cleared(rows))
    return wf.steps[index] if index < len(wf.steps) else None


def current_state(rows: list[StepRow], initial: State | None) -> State:
    """The state the next step gets: a waiting step's own, else the last cleared step's, else the initial state."""
    if rows and rows[-1].status in (StepStatus.SUSPEND, StepStatus.AWAITING_CALLBACK):
        return rows[-1].state
    done = cleared(rows)
    return done[-1].state if done else dict(initial or {})
