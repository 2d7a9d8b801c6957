"""`orchestrator.testing`: every helper on real runs of the test workflows, the messages of failing assertions,
and the `clean_orchestrator` fixture's clean database."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import testflows

from orchestrator import services
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.testing import (
    assert_aborted,
    assert_assignee,
    assert_awaiting_callback,
    assert_complete,
    assert_failed,
    assert_state,
    assert_state_equal,
    assert_step_name,
    assert_success,
    assert_suspended,
    assert_waiting,
    extract_error,
    extract_state,
    resume_workflow,
    run_workflow,
    step_names,
)

pytestmark = pytest.mark.usefixtures("clean_orchestrator")


async def test_run_to_suspended_then_resume_to_complete() -> None:
    result = await run_workflow("tf_input", {"size": 3})
    schema = assert_suspended(result, form=testflows.NameForm)
    assert set(schema["properties"]) == {"name", "count"}
    assert_step_name(result, "Ask name")
    assert_assignee(result, "NOC")
    result = await resume_workflow(result.process_id, [{"name": "ada", "count": 2}])
    assert_complete(result)
    assert_success(result)
    assert_state(result, {"greeting": "hello ada x2 size 3"})
    assert step_names(result) == ["Start", "Sync step", "Ask name", "Ask name", "Use name", "Done"]
    assert [s.status for s in result.steps][-3:] == ["success", "success", "complete"]


async def test_state_equal_leaves_out_the_keys_every_process_has() -> None:
    result = await run_workflow("tf_simple")
    assert_state_equal(result, {"reporter": "john.doe", "sync": True, "async": True})
    with pytest.raises(AssertionError) as raised:
        assert_state_equal(result, {"reporter": "john.doe", "sync": True, "async": False})
    assert str(raised.value).startswith("Unexpected state:\n")
    assert "- {'async': True, 'reporter': 'john.doe', 'sync': True}" in str(raised.value)
    assert "+ {'async': False, 'reporter': 'john.doe', 'sync': True}" in str(raised.value)


async def test_failed_with_its_error_then_retried() -> None:
    testflows.SWITCHES["fail"] = True
    try:
        result = await run_workflow("tf_fail")
        assert_failed(result)
        assert_failed(result, "flaky failure")
        assert_failed(result, ValueError)
        assert extract_error(result) == "flaky failure"
        assert extract_state(result)["sync"] is True  # the state the failed step was given
        testflows.SWITCHES["fail"] = False
        assert_complete(await resume_workflow(result))
    finally:
        testflows.SWITCHES["fail"] = True


@pytest.mark.parametrize(
    ("workflow", "status"), [("tf_task_assert", "inconsistent_data"), ("tf_task_api", "api_unavailable")]
)
async def test_task_failures_count_as_failed(workflow: str, status: str) -> None:
    result = await run_workflow(workflow)
    assert result.status == status
    assert_failed(result)


async def test_waiting_awaiting_callback_and_aborted() -> None:
    assert_waiting(waiting := await run_workflow("tf_retry"))
    assert extract_error(waiting) == "service down"
    assert_awaiting_callback(await run_workflow("tf_callback"))
    assert_aborted(await run_workflow("tf_abort"))


async def test_a_failing_assertion_says_where_the_process_stands() -> None:
    result = await run_workflow("tf_fail")
    with pytest.raises(AssertionError) as raised:
        assert_complete(result)
    message = str(raised.value)
    first, *rest = message.splitlines()
    assert first == (
        f"Unexpected process status. Expected completed, but process {result.process_id} (tf_fail) is failed at"
        " step 'Flaky': flaky failure"
    )
    assert rest[:3] == ["            success  Start", "            success  Sync step", "             failed  Flaky"]
    assert "traceback of the failure:" in message and "ValueError: flaky failure" in message


async def test_failing_assertions_on_forms_errors_state_and_steps() -> None:
    suspended = await run_workflow("tf_input", {"size": 3})
    cases = [
        (
            lambda: assert_suspended(suspended, form=testflows.InitialForm),
            "Unexpected form. Expected InitialForm with fields ['size'], but",
        ),
        (lambda: assert_failed(suspended), "Expected api_unavailable or failed or inconsistent_data, but"),
        (
            lambda: assert_state(suspended, {"size": 4}),
            "Invalid state. Expected superset of: {'size': 4}, but was: {'size': 3}",
        ),
        (lambda: assert_step_name(suspended, "Use name"), "Unexpected name. Expected 'Use name', but was: 'Ask name'"),
        (lambda: assert_assignee(suspended, "SYSTEM"), "Unexpected assignee. Expected SYSTEM, but was: NOC"),
        (lambda: extract_error(suspended), "Expected a failed step, but"),
    ]
    for check, expected in cases:
        with pytest.raises(AssertionError, match=re.escape(expected)):
            check()
    with pytest.raises(AssertionError, match=re.escape("asking for a form with fields ['count', 'name']")):
        assert_complete(suspended)
    failed = await run_workflow("tf_fail")
    with pytest.raises(AssertionError, match=re.escape("Unexpected error. Expected 'KeyError', but")):
        assert_failed(failed, KeyError)


@pytest.mark.parametrize("attempt", [1, 2])
async def test_each_test_starts_on_an_empty_database(clean_orchestrator: Orchestrator, attempt: int) -> None:
    pool = clean_orchestrator.store.pool
    assert await pool.fetchval("SELECT count(*) FROM processes") == 0
    assert (await services.engine_status())["global_lock"] is False
    await run_workflow("tf_simple")
    await services.set_engine_lock(True)  # left behind on purpose: the next test must not see it


def test_the_helpers_import_without_pytest() -> None:
    code = "import sys; sys.modules['pytest'] = None; import orchestrator.testing"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
