"""Workflows with parallel branches, for the tests (imported through WORKFLOW_MODULES, also by worker processes)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from testflows import call_external, validate_callback

from orchestrator import (
    FormPage,
    RetryPolicy,
    State,
    StepList,
    begin,
    callback_step,
    done,
    init,
    inputstep,
    map_parallel,
    parallel,
    step,
    workflow,
)

RUNS: Counter[str] = Counter()
"""How often each counted step ran in this program (in-process tests)."""
SWITCHES: dict[str, Any] = {"fail": True, "hold": False}


@step("Prepare")
def prepare() -> State:
    return {"gone": 1, "shared": 0, "ports": ["p1", "p2", "p3"], "empty": []}


@step("Set A")
def set_a() -> State:
    RUNS["Set A"] += 1
    return {"a": 1, "shared": 7}


@step("Set B")
def set_b() -> State:
    RUNS["Set B"] += 1
    return {"b": 2, "__remove_keys": ["gone"]}


@step("Agree")
def agree() -> State:
    return {"shared": 7}


@step("Disagree")
def disagree() -> State:
    return {"shared": 8}


@workflow("Parallel join")
def pf_parallel() -> StepList:
    return begin >> init >> prepare >> parallel("Fan out", set_a, set_b >> agree, agree) >> done


@workflow("Parallel conflict")
def pf_conflict() -> StepList:
    return begin >> init >> prepare >> parallel("Clash", agree, disagree) >> done


@step("Double")
async def double(item: str, item_index: int) -> State:
    await asyncio.sleep(0)
    return {"port": item.upper(), "position": item_index}


@workflow("Map join")
def pf_map() -> StepList:
    return (
        begin
        >> init
        >> prepare
        >> map_parallel("Each", "ports", double, result_key="results", max_concurrency=2)
        >> map_parallel("None", "empty", double, result_key="nothing")
        >> done
    )


@workflow("Nested forks")
def pf_nested() -> StepList:
    inner = parallel("Inner", set_a, set_b)
    each = map_parallel("Each", lambda state: state["ports"][:2], double >> inner, result_key="per_port")
    return begin >> init >> prepare >> parallel("Outer", inner, each) >> done


class ApprovalForm(FormPage):
    approved: bool


@inputstep("Approve", assignee="NOC")
def approve() -> type[ApprovalForm]:
    return ApprovalForm


class CommentForm(FormPage):
    comment: str


@inputstep("Comment")
def comment() -> type[CommentForm]:
    return CommentForm


@step("After approval")
def after_approval(approved: bool) -> State:
    RUNS["After approval"] += 1
    return {"checked": approved}


@workflow("Input in a branch")
def pf_input() -> StepList:
    return begin >> init >> parallel("Ask", approve >> after_approval, set_a, comment) >> done


@workflow("Callback in a branch")
def pf_callback() -> StepList:
    return begin >> init >> parallel("Call", callback_step("Callback", call_external, validate_callback), set_a) >> done


@step("Flaky")
def flaky() -> State:
    RUNS["Flaky"] += 1
    if SWITCHES["fail"]:
        raise ValueError("flaky branch failed")
    return {"flaky": "ok"}


@workflow("Failing branch")
def pf_retry() -> StepList:
    return begin >> init >> parallel("Mixed", set_a, flaky >> set_b) >> done


@step("Held")
async def held(item_index: int) -> State:
    RUNS[f"Held {item_index}"] += 1
    while SWITCHES["hold"]:
        await asyncio.sleep(0.01)
    return {"held": item_index}


@step("After held")
def after_held(item_index: int) -> State:
    RUNS[f"After held {item_index}"] += 1
    return {"after": item_index}


@workflow("Held branches")
def pf_held() -> StepList:
    return (
        begin >> init >> prepare >> map_parallel("Hold", "ports", held >> after_held, result_key="held_results") >> done
    )


@step("Retried", retry=RetryPolicy(max_attempts=3, initial_interval=0.2))
def retried() -> State:
    RUNS["Retried"] += 1
    if RUNS["Retried"] == 1:
        raise ValueError("the first attempt fails")
    return {"retried": True}


@step("Slow sibling")
async def slow_sibling() -> State:
    RUNS["Slow sibling"] += 1
    await asyncio.sleep(0.5)  # outlasts the first retry's delay: the fork settles after the attempt is due
    return {"slow": True}


@workflow("Retry policy in a branch")
def pf_retry_policy() -> StepList:
    return begin >> init >> parallel("Try", retried, slow_sibling) >> done


def _first_attempt(name: str) -> bool:
    """Whether this is the step's first run: a marker file in PF_MARKS (so that worker processes count too)."""
    mark = Path(os.environ["PF_MARKS"]) / name
    if mark.exists():
        return False
    mark.touch()
    return True


@step("Retried soon", retry=RetryPolicy(max_attempts=2, initial_interval=0.2))
def retried_soon() -> State:
    if _first_attempt("soon"):
        raise ValueError("the first attempt fails")
    return {"soon": True}


@step("Retried later", retry=RetryPolicy(max_attempts=2, initial_interval=1.5))
def retried_later() -> State:
    if _first_attempt("later"):
        raise ValueError("the first attempt fails")
    return {"later": True}


@workflow("Retry timers in two branches")
def pf_retry_timers() -> StepList:
    """Two branches whose first attempt fails, retried after different delays: each runs again once its own is due."""
    return begin >> init >> parallel("Timers", retried_soon, retried_later) >> done


async def assert_each_branch_retried_when_due(pool: Any, pid: Any) -> None:
    """Each branch of a completed `pf_retry_timers` ran twice, and its second attempt started at its own due time."""
    rows = await pool.fetch(
        "SELECT branch, status, state, started_at FROM process_steps WHERE pid = $1 AND branch IS NOT NULL"
        " ORDER BY completed_at, seq",
        pid,
    )
    for branch in ("Timers[0]", "Timers[1]"):
        own = [r for r in rows if r["branch"] == branch]
        assert [r["status"] for r in own] == ["waiting", "success"], own
        due = datetime.fromisoformat(own[0]["state"]["next_attempt_at"])
        assert own[1]["started_at"] >= due, (branch, own[1]["started_at"], due)
