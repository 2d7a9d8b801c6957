"""When a waiting process continues: the timer a step outcome sets, from the step's retry policy or a sleep.

A failure of a step with a `RetryPolicy` is attempt n: if the policy retries it, the outcome is `waiting` (an
orchestrator-core status) with `attempt` and `next_attempt_at` in the row's state and a timer at that time; the
last attempt's failure is `failed`. The attempt count is read back from the previous row: the `waiting` row of an
earlier attempt of the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from orchestrator.dsl.results import Failed, Process, Waiting
from orchestrator.dsl.sleep import SLEEP_UNTIL, WAKE_AT
from orchestrator.dsl.steps import Step
from orchestrator.dsl.types import State, StepStatus


class PreviousRow(Protocol):
    name: str
    status: str
    state: State


@dataclass(frozen=True)
class Wake:
    at: datetime
    kind: str
    """`retry` or `sleep`."""
    attempt: int = 0


def _previous_attempt(step: Step, previous: PreviousRow | None) -> int:
    if previous is None or previous.name != step.name or previous.status != StepStatus.WAITING:
        return 0
    attempt = previous.state.get("attempt", 1)
    return attempt if isinstance(attempt, int) else 1


def next_wake(step: Step, result: Process, previous: PreviousRow | None) -> tuple[Process, Wake | None]:
    """The outcome to write for `result`, and the timer to set with it (None: no timer)."""
    if isinstance(result, Waiting) and WAKE_AT in result.state:
        state = dict(result.state)
        at = datetime.fromisoformat(state.pop(WAKE_AT))
        return Waiting(state, result.exception), Wake(at, "sleep")
    policy = step.retry
    if policy is None or not result.failed:
        return result, None
    attempt = _previous_attempt(step, previous) + 1
    if policy.retries(result.exception, attempt):
        at = datetime.now(UTC) + policy.delay_after(attempt)
        state = {**result.state, "attempt": attempt, "next_attempt_at": at.isoformat()}
        return Waiting(state, result.exception), Wake(at, "retry", attempt)
    return Failed({**result.state, "attempt": attempt}, result.exception), None


def stored_wake(state: State) -> Wake | None:
    """The timer of a stored `waiting` row, from its state: a retry policy's next attempt, or a sleep's end (a
    waiting branch's row: its fork settles the process `waiting` with this timer)."""
    retry_at, sleep_until = state.get("next_attempt_at"), state.get(SLEEP_UNTIL)
    if isinstance(retry_at, str):
        attempt = state.get("attempt", 1)
        return Wake(datetime.fromisoformat(retry_at), "retry", attempt if isinstance(attempt, int) else 1)
    if isinstance(sleep_until, str):
        return Wake(datetime.fromisoformat(sleep_until), "sleep")
    return None
