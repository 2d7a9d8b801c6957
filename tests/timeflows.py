"""Workflows of the time tests: retry policies, retrystep without one, durable sleeps, scheduled tasks."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from orchestrator import RetryPolicy, State, begin, done, init, inputstep, retrystep, sleep_step, step, workflow
from orchestrator.dsl.forms import FormPage

ATTEMPTS: dict[str, list[float]] = {}
"""Per process id: the wall-clock times its flaky step ran."""

FAIL_TIMES = 2


def _attempt(process_id: str) -> int:
    ATTEMPTS.setdefault(process_id, []).append(time.time())
    return len(ATTEMPTS[process_id])


@step("Flaky", retry=RetryPolicy(max_attempts=4, initial_interval=0.5, backoff=2, max_interval=10))
def flaky(process_id: str) -> State:
    if _attempt(process_id) <= FAIL_TIMES:
        raise ConnectionError("remote down")
    return {"flaky_done": True}


@workflow("Flaky twice, then fine")
def time_retry_policy() -> object:
    return begin >> init >> flaky >> done


@retrystep("Always failing", retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=200)))
def always_failing(process_id: str) -> State:
    _attempt(process_id)
    raise ConnectionError(f"attempt {len(ATTEMPTS[process_id])} failed")


@workflow("Exhausts its attempts")
def time_retry_exhausted() -> object:
    return begin >> init >> always_failing >> done


@step("Not retried", retry=RetryPolicy(max_attempts=5, initial_interval=0.1, retry_on=ConnectionError))
def not_retried(process_id: str) -> State:
    _attempt(process_id)
    raise KeyError("not a connection error")


@workflow("Fails on an exception the policy does not retry")
def time_retry_on() -> object:
    return begin >> init >> not_retried >> done


@retrystep("Plain retrystep")
def plain_retrystep(process_id: str) -> State:
    if _attempt(process_id) == 1:
        raise ConnectionError("first attempt fails")
    return {"plain_done": True}


@workflow("A retrystep without a policy")
def time_plain_retrystep() -> object:
    return begin >> init >> plain_retrystep >> done


@step("After sleep")
def after_sleep() -> State:
    return {"woke_at": time.time()}


@workflow("Sleeps a second")
def time_sleep() -> object:
    return begin >> init >> sleep_step("Nap", timedelta(seconds=1)) >> after_sleep >> done


class WakeForm(FormPage):
    wake_at: datetime


@workflow("Sleeps until the time it is given", initial_input_form=WakeForm)
def time_sleep_until() -> object:
    until = sleep_step("Until", lambda state: datetime.fromisoformat(state["wake_at"]))
    return begin >> init >> until >> after_sleep >> done


@step("Tick")
def tick() -> State:
    return {"ticked": True}


@workflow("A scheduled task", is_task=True)
def time_tick() -> object:
    return begin >> init >> tick >> done


class HoldForm(FormPage):
    go: bool


@inputstep("Hold", assignee="SYSTEM")
def hold() -> type[HoldForm]:
    return HoldForm


@workflow("A scheduled task that waits for input", is_task=True)
def time_tick_held() -> object:
    return begin >> init >> hold >> done
