"""Workflows used by the tests (imported through WORKFLOW_MODULES=testflows, also by worker subprocesses)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from uuid import UUID

from orchestrator import (
    FormPage,
    RunPredicateFail,
    State,
    StepList,
    Target,
    abort,
    begin,
    callback_step,
    conditional,
    done,
    focussteps,
    init,
    inputstep,
    retrystep,
    step,
    step_group,
    workflow,
)
from orchestrator.exceptions import ApiUnavailableError, ProcessFailureError

SWITCHES: dict[str, Any] = {"fail": True}
"""Flipped by in-process tests to make a failing step pass on retry."""


@step("Sync step")
def sync_step(process_id: UUID) -> State:
    assert isinstance(process_id, UUID)  # UUID conversion by annotation
    return {"sync": True}


@step("Async step")
async def async_step(sync: bool) -> State:
    await asyncio.sleep(0)
    return {"async": sync}


@workflow("Simple", target=Target.CREATE)
def tf_simple() -> StepList:
    return begin >> init >> sync_step >> async_step >> done


class NameForm(FormPage):
    name: str
    count: int = 1


class InitialForm(FormPage):
    size: int


def initial_form() -> type[InitialForm]:
    return InitialForm


@inputstep("Ask name", assignee="NOC")
def ask_name(size: int) -> type[NameForm]:
    return NameForm


@step("Use name")
def use_name(name: str, count: int, size: int, nested: dict[str, Any] | None = None) -> State:
    return {"greeting": f"hello {name} x{count} size {size}"}


@workflow("A built-in step between user steps")
def tf_init_between() -> StepList:
    return init >> sync_step >> init >> sync_step >> done


@workflow("Input", initial_input_form=initial_form, target=Target.MODIFY)
def tf_input() -> StepList:
    return init >> sync_step >> ask_name >> use_name >> done


def two_page_form() -> Any:
    first = yield InitialForm
    second = yield NameForm
    return {"size": first.size, "name": second.name, "count": second.count}


@workflow("Two pages", initial_input_form=two_page_form)
def tf_two_pages() -> StepList:
    return init >> use_name >> done


@step("Flaky")
def flaky() -> State:
    if SWITCHES["fail"]:
        raise ValueError("flaky failure")
    return {"flaky": "ok"}


@workflow("Fails until switched")
def tf_fail() -> StepList:
    return init >> sync_step >> flaky >> done


@retrystep("Retry later")
def retry_later() -> State:
    if SWITCHES["fail"]:
        raise ConnectionError("service down")
    return {"retried": True}


@workflow("Waiting")
def tf_retry() -> StepList:
    return init >> retry_later >> done


@step("Assert")
def failing_assert() -> State:
    raise AssertionError("data is inconsistent")


@step("Api down")
def api_down() -> State:
    raise ApiUnavailableError("the IMS is down")


@step("Detailed failure")
def detailed() -> State:
    raise ProcessFailureError("it broke", {"code": 42})


@workflow("Task inconsistent", is_task=True)
def tf_task_assert() -> StepList:
    return init >> failing_assert >> done


@workflow("Task api unavailable", is_task=True)
def tf_task_api() -> StepList:
    return init >> api_down >> done


@workflow("Task failed", is_task=True)
def tf_task_fail() -> StepList:
    return init >> detailed >> done


@workflow("Workflow that asserts")
def tf_assert() -> StepList:
    return init >> failing_assert >> done


@step("Set flag")
def set_flag(flag: bool = False) -> State:
    return {"flag": flag}


@step("Only with flag")
def only_with_flag() -> State:
    return {"ran_conditional": True}


@workflow("Conditional")
def tf_conditional() -> StepList:
    return init >> set_flag >> conditional(lambda s: bool(s.get("flag")))(only_with_flag) >> done


@step("Focused")
def focused(x: int = 0) -> State:
    return {"x": x + 1}


@workflow("Focus")
def tf_focus() -> StepList:
    return init >> focussteps("sub")(focused) >> done


@step("Group one")
def group_one() -> State:
    return {"g1": True}


@step("Group two")
def group_two(g1: bool, name: str) -> State:
    return {"g2": f"{g1}-{name}"}


@inputstep("Ask group name")
def ask_group_name() -> type[NameForm]:
    return NameForm


@workflow("Group")
def tf_group() -> StepList:
    return init >> step_group("Group", group_one >> ask_group_name >> group_two) >> done


@step("Call external system")
def call_external(callback_route: str) -> State:
    return {"called": callback_route}


@step("Validate callback")
def validate_callback(callback_result: dict[str, Any]) -> State:
    return {"validated": callback_result.get("ok")}


@workflow("Callback")
def tf_callback() -> StepList:
    return init >> callback_step("Callback", call_external, validate_callback) >> done


@workflow("Aborts itself")
def tf_abort() -> StepList:
    return init >> sync_step >> abort


@workflow("No done")
def tf_no_done() -> StepList:
    return init >> sync_step


@step("Temporary")
def temporary() -> State:
    return {"tmp": 1, "keep": 2}


@step("Remove temporary")
def remove_temporary() -> State:
    return {"__remove_keys": ["tmp"]}


@workflow("Remove keys")
def tf_remove_keys() -> StepList:
    return init >> temporary >> remove_temporary >> done


@step("Injected")
def injected(state: State, process_id: UUID, missing_ok: str = "default", ids: list[UUID] | None = None) -> State:
    return {"had_state": "process_id" in state, "missing_ok": missing_ok, "pid_type": type(process_id).__name__}


@step("Needs missing")
def needs_missing(not_there: str) -> State:
    return {}


@workflow("Injection")
def tf_injection() -> StepList:
    return init >> injected >> done


@workflow("Missing key")
def tf_missing_key() -> StepList:
    return init >> needs_missing >> done


@step("Unserializable")
def unserializable() -> State:
    return {"obj": object()}


@workflow("Unserializable state")
def tf_unserializable() -> StepList:
    return init >> unserializable >> done


def never(_: Any) -> RunPredicateFail:
    return RunPredicateFail("not today")


@workflow("Predicate", run_predicate=never)
def tf_predicate() -> StepList:
    return init >> done


@step("Slow")
def slow(slow_seconds: float = 0.0) -> State:
    time.sleep(float(os.environ.get("TF_SLOW_SECONDS", slow_seconds)))
    return {"slow": True}


@step("After slow")
async def after_slow() -> State:
    return {"after": True}


@workflow("Slow")
def tf_slow() -> StepList:
    return init >> slow >> after_slow >> done


@workflow("Slow task", is_task=True)
def tf_slow_task() -> StepList:
    return init >> slow >> after_slow >> done


def deny(_: Any) -> bool:
    return False


@workflow("Denied", authorize_callback=deny)
def tf_denied() -> StepList:
    return init >> done


@step("Nul character")
def nul_character() -> State:
    return {"text": "a\x00b"}  # valid JSON, but PostgreSQL's jsonb cannot store it


@workflow("Nul character in state")
def tf_nul() -> StepList:
    return init >> nul_character >> done


@workflow("Callback with a timeout")
def tf_callback_timeout() -> StepList:
    return init >> callback_step("Callback", call_external, validate_callback, timeout=0.2) >> done


RUN_OUTCOMES = [
    ("tf_simple", None, "completed"),
    ("tf_input", [{"size": 3}], "suspended"),
    ("tf_retry", None, "waiting"),
    ("tf_callback", None, "awaiting_callback"),
    ("tf_fail", None, "failed"),
    ("tf_task_api", None, "api_unavailable"),
    ("tf_task_assert", None, "inconsistent_data"),
    ("tf_abort", None, "aborted"),
]
"""(workflow, initial input, the status its first run ends in), for every status that ends a run."""
