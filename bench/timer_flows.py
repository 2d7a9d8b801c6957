"""The workflows of the time benchmark (`bench.timers`), loaded by its servers as WORKFLOW_MODULES."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from orchestrator import State, StepList, begin, done, init, sleep_step, step, workflow
from orchestrator.dsl.forms import FormPage


class WakeAt(FormPage):
    wake_at: float
    """Epoch seconds: fixed by the bench, whenever the process gets to its sleep."""


def _due(state: State) -> datetime:
    return datetime.fromtimestamp(float(state["wake_at"]), UTC)


@step("Woke")
def woke() -> State:
    """The step after the sleep: its start time, against the sleep's due time, is the wake-up lateness."""
    return {"woke_at": time.time()}


@workflow("Sleeps, then records when it woke", initial_input_form=WakeAt)
def bench_sleeper() -> StepList:
    return begin >> init >> sleep_step("Sleep", _due) >> woke >> done


@workflow("A scheduled task that does nothing", is_task=True)
def bench_tick() -> StepList:
    return begin >> init >> done
