"""Durable sleep: `sleep_step(name, delay)` makes the process wait until a due time, holding no runner, thread or
connection, and continue there, across restarts and crashes of every program.

It is two steps. The first (`name`) fixes the wake-up time in the state (`__sleep_until`), so that it is computed
once. The second (`"<name> - wait"`) leaves the process `waiting` until then, with a timer the engine fires at
that time; run again (by that timer, or by a manual retry), it waits again if the time has not come, and lets the
process continue if it has. Abort and engine pause apply as to any waiting process.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from orchestrator.dsl.results import Process, Success, Waiting
from orchestrator.dsl.steps import Step, StepContext, StepList
from orchestrator.dsl.types import State
from orchestrator.exceptions import InvalidWorkflowError

SLEEP_UNTIL = "__sleep_until"
"""State key: the ISO time the current sleep ends."""

WAKE_AT = "__wake_at"
"""Key of a `Waiting` result's state: the engine sets a timer for that time (and drops the key)."""

Delay = timedelta | Callable[[State], timedelta | datetime]


def _wake_time(delay: Delay, state: State) -> datetime:
    value = delay(state) if callable(delay) else delay
    if isinstance(value, timedelta):
        return datetime.now(UTC) + value
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    raise TypeError(f"a sleep's delay must be a timedelta or an aware datetime, got {value!r}")


def sleep_step(name: str, delay: Delay) -> StepList:
    """Wait `delay` (a timedelta, or a function of the state returning a timedelta or an aware datetime)."""
    if not (isinstance(delay, timedelta) or callable(delay)):
        raise InvalidWorkflowError(f"sleep_step {name!r}: delay must be a timedelta or a callable, got {delay!r}")

    async def fix_wake_time(state: State, ctx: StepContext) -> Process:
        return Success({**state, SLEEP_UNTIL: _wake_time(delay, state).isoformat()})

    async def wait(state: State, ctx: StepContext) -> Process:
        until = datetime.fromisoformat(state[SLEEP_UNTIL])
        if until > datetime.now(UTC):
            return Waiting({**state, WAKE_AT: until.isoformat()})
        return Success({k: v for k, v in state.items() if k != SLEEP_UNTIL})

    return StepList([Step(name=name, func=fix_wake_time), Step(name=f"{name} - wait", func=wait)])
