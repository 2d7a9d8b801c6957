"""The engine against a real PostgreSQL: step kinds, transitions, resumes, abort, state rules."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
import testflows
from pydantic import ConfigDict
from pydantic_forms.core import FormPage
from pydantic_forms.exceptions import FormNotCompleteError, FormOverflowError, FormValidationError
from support.database import step_rows
from support.waiting import wait_status

from orchestrator import services
from orchestrator.dsl.forms import first_page_schema, run_form
from orchestrator.exceptions import (
    EngineLockedError,
    NotAuthorizedError,
    ProcessNotFoundError,
    ProcessStatusError,
    StartPredicateError,
    WorkflowNotFoundError,
)
from orchestrator.runtime.inprocess import InProcessExecutor
from orchestrator.runtime.orchestrator import Orchestrator


@pytest.fixture(autouse=True)
def _reset_switches() -> None:
    testflows.SWITCHES["fail"] = True


async def start(
    orch: Orchestrator, key: str, inputs: list[dict[str, object]] | None = None, user: str = "alice"
) -> UUID:
    return await services.start_process(key, inputs or [{}], user=user, orchestrator=orch)


async def test_simple_workflow_completes_with_sync_and_async_steps(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_simple")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert await step_rows(orch.store.pool, pid) == [
        ("Start", "success"),
        ("Sync step", "success"),
        ("Async step", "success"),
        ("Done", "complete"),
    ]
    state = process["current_state"]
    assert state["sync"] is True and state["async"] is True
    assert state["process_id"] == str(pid) and state["reporter"] == "alice"
    assert state["workflow_name"] == "tf_simple" and state["workflow_target"] == "CREATE"
    assert process["created_by"] == "alice" and process["last_step"] == "Done"


async def test_suspend_resume_with_form_validation(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_input", [{"size": 3}])
    process = await wait_status(orch, pid)
    assert process["last_status"] == "suspended"
    assert process["assignee"] == "NOC"
    assert process["form"]["title"] == "Name form"  # pydantic-forms' "unknown" replaced by the page's name
    assert {"name", "count"} <= process["form"]["properties"].keys()
    before = await step_rows(orch.store.pool, pid)
    with pytest.raises(FormValidationError):
        await services.resume_process(pid, [{"count": "many"}], user="bob", orchestrator=orch)
    with pytest.raises(FormNotCompleteError):
        await services.resume_process(pid, [], user="bob", orchestrator=orch)
    # A form error writes nothing.
    assert await step_rows(orch.store.pool, pid) == before
    assert await orch.store.pool.fetchval("SELECT count(*) FROM input_states WHERE pid = $1", pid) == 1
    await services.resume_process(pid, [{"name": "Ada", "count": 2}], user="bob", orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert process["current_state"]["greeting"] == "hello Ada x2 size 3"
    rows = await orch.store.pool.fetch(
        "SELECT name, status, created_by FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq", pid
    )
    assert [(r["name"], r["status"]) for r in rows] == [
        ("Start", "success"),
        ("Sync step", "success"),
        ("Ask name", "suspend"),
        ("Ask name", "success"),
        ("Use name", "success"),
        ("Done", "complete"),
    ]
    assert rows[0]["created_by"] == "alice" and rows[3]["created_by"] == "bob"


async def test_initial_form_errors_create_nothing(orch: Orchestrator) -> None:
    with pytest.raises(FormValidationError):
        await start(orch, "tf_input", [{"size": "big"}])
    with pytest.raises(FormNotCompleteError) as incomplete:
        await services.start_process("tf_input", [], orchestrator=orch)
    assert "size" in incomplete.value.form["properties"]
    with pytest.raises(FormOverflowError):
        await start(orch, "tf_simple", [{}, {}])
    assert await orch.store.pool.fetchval("SELECT count(*) FROM processes") == 0


async def test_multi_page_initial_form(orch: Orchestrator) -> None:
    with pytest.raises(FormNotCompleteError) as page_two:
        await start(orch, "tf_two_pages", [{"size": 1}])
    assert "name" in page_two.value.form["properties"]
    pid = await start(orch, "tf_two_pages", [{"size": 1}, {"name": "x", "count": 3}])
    assert (await wait_status(orch, pid))["current_state"]["greeting"] == "hello x x3 size 1"


async def test_failed_step_retry_from_failed_step(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_fail")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "failed"
    assert process["failed_reason"] == "flaky failure"
    assert "ValueError" in process["traceback"]
    # Retrying with the same failure collapses into one row with a retry count.
    await services.resume_process(pid, [{}], user="alice", orchestrator=orch)
    await asyncio.sleep(0)
    process = await wait_status(orch, pid, {"failed"})
    process = await wait_status(orch, pid)
    failed = [s for s in process["steps"] if s.get("status") == "failed"]
    assert len(failed) == 1 and failed[0]["state"]["retries"] == 1
    assert "traceback" not in failed[0]["state"]
    testflows.SWITCHES["fail"] = False
    await services.resume_process(pid, [{}], user="alice", orchestrator=orch)
    process = await wait_status(orch, pid, {"completed"})
    assert process["failed_reason"] is None and process["traceback"] is None
    assert [(s["name"], s["status"]) for s in process["steps"]][-3:] == [
        ("Flaky", "failed"),
        ("Flaky", "success"),
        ("Done", "complete"),
    ]
    # The sync step before the failure ran exactly once.
    assert [n for n, _ in await step_rows(orch.store.pool, pid)].count("Sync step") == 1


async def test_retrystep_waits_then_resumes(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_retry")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "waiting" and process["failed_reason"] == "service down"
    testflows.SWITCHES["fail"] = False
    await services.resume_process(pid, orchestrator=orch)
    assert (await wait_status(orch, pid))["last_status"] == "completed"


@pytest.mark.parametrize(
    ("key", "status", "assignee"),
    [
        ("tf_task_assert", "inconsistent_data", "NOC"),
        ("tf_task_api", "api_unavailable", "SYSTEM"),
        ("tf_task_fail", "failed", "SYSTEM"),
        ("tf_assert", "failed", "SYSTEM"),  # not a task: no sub-status
    ],
)
async def test_failure_classification(orch: Orchestrator, key: str, status: str, assignee: str) -> None:
    pid = await start(orch, key)
    process = await wait_status(orch, pid)
    assert process["last_status"] == status
    assert process["assignee"] == assignee


async def test_process_failure_details_and_resume_of_task_statuses(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_task_fail")
    process = await wait_status(orch, pid)
    failed = next(s for s in process["steps"] if s.get("status") == "failed")
    assert failed["state"]["error"] == "it broke" and failed["state"]["details"] == {"code": 42}
    for key in ("tf_task_assert", "tf_task_api"):
        other = await start(orch, key)
        await wait_status(orch, other)
        await services.resume_process(other, orchestrator=orch)  # inconsistent_data / api_unavailable resumable
        assert (await wait_status(orch, other))["last_status"] in ("inconsistent_data", "api_unavailable")


async def test_conditional_skips_and_runs(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_conditional")
    await wait_status(orch, pid)
    assert ("Only with flag", "skipped") in await step_rows(orch.store.pool, pid)


async def test_focussteps(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_focus")
    process = await wait_status(orch, pid)
    assert process["current_state"]["sub"] == {"x": 1}


async def test_step_group_one_row_and_resume_inside(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_group")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "suspended"
    assert await step_rows(orch.store.pool, pid) == [("Start", "success"), ("Group", "suspend")]
    await services.resume_process(pid, [{"name": "G"}], orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert await step_rows(orch.store.pool, pid) == [
        ("Start", "success"),
        ("Group", "suspend"),
        ("Group", "success"),
        ("Done", "complete"),
    ]
    state = process["current_state"]
    assert state["g2"] == "True-G"
    assert "__step_group" not in state and "__sub_step" not in state


async def test_callback_step(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_callback")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "awaiting_callback"
    state = process["current_state"]
    route = state["callback_route"]
    token = route.rsplit("/", 1)[1]
    assert route == f"/api/processes/{pid}/callback/{token}" and state["called"] == route
    with pytest.raises(Exception, match="Invalid token"):
        await services.continue_with_callback(pid, "wrong", {"ok": 1}, orchestrator=orch)
    await services.report_callback_progress(pid, token, "half way", orchestrator=orch)
    process = await services.get_process(pid, orchestrator=orch)
    assert process["current_state"]["callback_progress"] == "half way"
    await services.continue_with_callback(pid, token, {"ok": 7}, orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert state["validated"] == 7
    assert "__callback_token" not in state and "callback_progress" not in state
    with pytest.raises(ProcessStatusError, match="not in an awaiting state"):
        await services.continue_with_callback(pid, token, {}, orchestrator=orch)


async def test_abort_step_and_user_abort(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_abort")
    assert (await wait_status(orch, pid))["last_status"] == "aborted"
    suspended = await start(orch, "tf_input", [{"size": 1}])
    await wait_status(orch, suspended)
    await services.abort_process(suspended, user="carol", orchestrator=orch)
    process = await services.get_process(suspended, orchestrator=orch)
    assert process["last_status"] == "aborted"
    last = process["steps"][-1]
    assert (last["name"], last["status"], last["created_by"]) == ("User Aborted", "abort", "carol")
    with pytest.raises(ProcessStatusError, match="Resuming a aborted"):
        await services.resume_process(suspended, orchestrator=orch)
    done = await start(orch, "tf_simple")
    await wait_status(orch, done)
    await services.abort_process(done, orchestrator=orch)  # completed: accepted, changes nothing
    assert (await services.get_process(done, orchestrator=orch))["last_status"] == "completed"
    with pytest.raises(ProcessNotFoundError):
        await services.abort_process(UUID(int=1), orchestrator=orch)


async def test_workflow_without_done_ends_completed(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_no_done")
    assert (await wait_status(orch, pid))["last_status"] == "completed"


async def test_remove_keys_and_injection(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_remove_keys")
    state = (await wait_status(orch, pid))["current_state"]
    assert "tmp" not in state and state["keep"] == 2 and "__remove_keys" not in state
    pid = await start(orch, "tf_injection")
    state = (await wait_status(orch, pid))["current_state"]
    assert state["had_state"] is True and state["missing_ok"] == "default" and state["pid_type"] == "UUID"


async def test_missing_key_and_unserializable_state_fail_the_step(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_missing_key")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "failed"
    assert "Could not find key 'not_there' in state" in process["failed_reason"]
    pid = await start(orch, "tf_unserializable")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "failed" and "not JSON serializable" in process["failed_reason"]


async def test_start_refusals(orch: Orchestrator) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await start(orch, "no_such_workflow")
    with pytest.raises(StartPredicateError, match="not today"):
        await start(orch, "tf_predicate")
    with pytest.raises(NotAuthorizedError):
        await start(orch, "tf_denied")
    assert await orch.store.pool.fetchval("SELECT count(*) FROM processes") == 0


async def test_resume_wrong_status(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_simple")
    await wait_status(orch, pid)
    with pytest.raises(ProcessStatusError, match="Resuming a completed workflow is not possible"):
        await services.resume_process(pid, orchestrator=orch)
    with pytest.raises(ProcessNotFoundError):
        await services.resume_process(UUID(int=2), orchestrator=orch)


async def test_engine_pause_and_unpause(orch: Orchestrator) -> None:
    status = await services.set_engine_lock(True, orchestrator=orch)
    assert status["global_lock"] is True and status["global_status"] == "PAUSED"
    with pytest.raises(EngineLockedError):
        await start(orch, "tf_simple")
    status = await services.set_engine_lock(False, orchestrator=orch)
    assert status["global_status"] == "RUNNING"
    pid = await start(orch, "tf_simple")
    assert (await wait_status(orch, pid))["last_status"] == "completed"


async def test_pause_stops_running_process_before_next_step(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_SLOW_SECONDS", "0.5")
    pid = await start(orch, "tf_slow")
    async with asyncio.timeout(5):  # pause while the slow step runs (the built-in `Start` is written with it)
        while await orch.store.pool.fetchval("SELECT last_status FROM processes WHERE pid = $1", pid) != "running":
            await asyncio.sleep(0.005)
    assert await step_rows(orch.store.pool, pid) == []
    await services.set_engine_lock(True, orchestrator=orch)
    assert (await services.engine_status(orchestrator=orch))["global_status"] in ("PAUSING", "PAUSED")
    process = await wait_status(orch, pid, {"resumed"})
    assert [s["name"] for s in process["steps"] if s["status"] != "pending"] == ["Start", "Slow"]
    assert (await services.engine_status(orchestrator=orch))["global_status"] == "PAUSED"
    await services.set_engine_lock(False, orchestrator=orch)
    assert (await wait_status(orch, pid))["last_status"] == "completed"
    assert await step_rows(orch.store.pool, pid) == [
        ("Start", "success"),
        ("Slow", "success"),
        ("After slow", "success"),
        ("Done", "complete"),
    ]


async def test_resume_while_paused_is_refused_and_writes_nothing(orch: Orchestrator) -> None:
    """The resume statement checks the engine lock itself (no separate read a pause could slip past)."""
    pid = await start(orch, "tf_input", [{"size": 1}])
    await wait_status(orch, pid)
    await services.set_engine_lock(True, orchestrator=orch)
    with pytest.raises(EngineLockedError):
        await services.resume_process(pid, [{"name": "Ada"}], orchestrator=orch)
    row = await orch.store.pool.fetchrow("SELECT last_status, lease_owner FROM processes WHERE pid = $1", pid)
    assert (row["last_status"], row["lease_owner"]) == ("suspended", None)
    assert await orch.store.pool.fetchval("SELECT count(*) FROM input_states WHERE pid = $1", pid) == 1
    assert isinstance(orch.executor, InProcessExecutor)
    assert orch.executor._leased == 0  # the run slot reserved for it was given back
    await services.set_engine_lock(False, orchestrator=orch)
    await services.resume_process(pid, [{"name": "Ada"}], orchestrator=orch)
    assert (await wait_status(orch, pid))["last_status"] == "completed"


async def test_a_resume_is_claimed_in_its_statement_and_fenced_by_the_token_it_read(orch: Orchestrator) -> None:
    """With a free slot, the resume statement claims the process (one fencing token more, no `resumed` step);
    a resume that read an older token (a run came in between) changes nothing."""
    pid = await start(orch, "tf_input", [{"size": 1}])
    await wait_status(orch, pid)
    token = await orch.store.pool.fetchval("SELECT fencing_token FROM processes WHERE pid = $1", pid)
    async with orch.store.transaction() as tx:
        stale = await orch.store.mark_resumed(
            tx, pid=pid, seen_status="suspended", seen_token=token - 1, user="bob", user_input={"name": "Old"}
        )
    assert stale is False
    assert await orch.store.pool.fetchval("SELECT count(*) FROM input_states WHERE pid = $1", pid) == 1
    await services.resume_process(pid, [{"name": "Ada"}], user="bob", orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert process["current_state"]["greeting"].startswith("hello Ada")
    assert await orch.store.pool.fetchval("SELECT fencing_token FROM processes WHERE pid = $1", pid) == token + 1


async def test_two_racing_resumes_exactly_one_wins(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_input", [{"size": 1}])
    await wait_status(orch, pid)
    results = await asyncio.gather(
        *(services.resume_process(pid, [{"name": f"n{i}"}], orchestrator=orch) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) >= 1
    assert all(r is None or isinstance(r, ProcessStatusError) for r in results)
    await wait_status(orch, pid)
    rows = await step_rows(orch.store.pool, pid)
    assert rows.count(("Use name", "success")) == 1 and rows.count(("Ask name", "success")) == 1


async def test_two_racing_claims_exactly_one_runs(orch: Orchestrator) -> None:
    """Two runners handed the same `created` process (a duplicated dispatch): one claims it, the other gets None."""
    pid = await start(orch, "tf_simple")
    runner = orch.executor.runner  # type: ignore[attr-defined]
    results = await asyncio.gather(runner.run(pid, "new"), runner.run(pid, "new"), runner.run(pid, "new"))
    await wait_status(orch, pid)
    assert await step_rows(orch.store.pool, pid) == [
        ("Start", "success"),
        ("Sync step", "success"),
        ("Async step", "success"),
        ("Done", "complete"),
    ]
    assert results.count(None) >= 2


async def test_abort_fences_out_a_running_runner(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_SLOW_SECONDS", "0.5")
    pid = await start(orch, "tf_slow")
    await wait_status(orch, pid, {"running"})
    await services.abort_process(pid, user="dave", orchestrator=orch)
    executor = orch.executor
    assert isinstance(executor, InProcessExecutor)
    async with asyncio.timeout(10):  # the slow step ends and its write is refused
        while executor.running:
            await asyncio.sleep(0.01)
    process = await services.get_process(pid, orchestrator=orch)
    assert process["last_status"] == "aborted"
    assert ("Slow", "success") not in await step_rows(orch.store.pool, pid)


async def test_get_process_lists_pending_steps(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_input", [{"size": 2}])
    process = await wait_status(orch, pid)
    assert [(s["name"], s["status"]) for s in process["steps"]] == [
        ("Start", "success"),
        ("Sync step", "success"),
        ("Ask name", "suspend"),
        ("Ask name", "pending"),
        ("Use name", "pending"),
        ("Done", "pending"),
    ]


async def test_state_postgres_cannot_store_fails_only_that_step(orch: Orchestrator) -> None:
    bad, good = await asyncio.gather(start(orch, "tf_nul"), start(orch, "tf_simple"))
    process = await wait_status(orch, bad)
    assert process["last_status"] == "failed"
    assert "cannot be stored" in process["failed_reason"]
    assert (await wait_status(orch, good))["last_status"] == "completed"


async def test_callback_timeout_fails_the_process_and_a_retry_runs_the_callback_step_again(orch: Orchestrator) -> None:
    pid = await start(orch, "tf_callback_timeout")
    process = await wait_status(orch, pid, {"failed"}, timeout=10)
    assert process["failed_reason"] == "Callback timed out"
    assert process["last_step"] == "Callback timed out"
    rows = await step_rows(orch.store.pool, pid)
    assert rows == [("Start", "success"), ("Callback", "failed")]  # the awaiting row was overwritten
    await services.resume_process(pid, orchestrator=orch)  # a retry runs the callback step again: a new route
    # The group's row reads "success" between its action and its await; wait for where the group stops.
    settled = ("awaiting_callback", "failed")  # failed if this await timed out too
    async with asyncio.timeout(10):
        while len(rows := await step_rows(orch.store.pool, pid)) < 3 or rows[2][1] not in settled:
            await asyncio.sleep(0.01)
    assert rows[:2] == [("Start", "success"), ("Callback", "failed")]
    assert rows[2][0] == "Callback"


def test_form_pages_without_a_title_are_titled_after_their_class_and_titles_given_are_kept() -> None:
    class ApprovalForm(FormPage):
        approved: bool

    class Details(FormPage):
        model_config = ConfigDict(title="Details of the port")
        speed: int

    def two_pages() -> Any:
        approval = yield ApprovalForm
        details = yield Details
        return {"approved": approval.approved, "speed": details.speed}

    assert (first_page_schema(two_pages, {}) or {})["title"] == "Approval form"
    with pytest.raises(FormNotCompleteError) as next_page:
        run_form(two_pages, {}, [{"approved": True}])
    assert next_page.value.form["title"] == "Details of the port"
    assert run_form(two_pages, {}, [{"approved": True}, {"speed": 10}]) == {"approved": True, "speed": 10}


async def commits_of(orch: Orchestrator, pid: UUID) -> list[list[str]]:
    """The step rows of `pid` grouped by the statement that wrote them (rows of one statement share completed_at)."""
    rows = await orch.store.pool.fetch(
        "SELECT name, completed_at FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq", pid
    )
    groups: dict[Any, list[str]] = {}
    for row in rows:
        groups.setdefault(row["completed_at"], []).append(row["name"])
    return list(groups.values())


async def test_built_in_steps_are_committed_with_their_neighbours(orch: Orchestrator) -> None:
    """`init` (pure) is written with the first user step, `done` with the last one: every user step's outcome is
    still its own commit before the next user step runs; the input step's with the step after it."""
    pid = await start(orch, "tf_input", [{"size": 1}])
    await wait_status(orch, pid)
    assert await commits_of(orch, pid) == [["Start", "Sync step"], ["Ask name"]]
    await services.resume_process(pid, [{"name": "Ada"}], orchestrator=orch)
    assert (await wait_status(orch, pid))["last_status"] == "completed"
    assert await commits_of(orch, pid) == [["Start", "Sync step"], ["Ask name"], ["Ask name", "Use name", "Done"]]
    assert await step_rows(orch.store.pool, pid) == [
        ("Start", "success"),
        ("Sync step", "success"),
        ("Ask name", "suspend"),
        ("Ask name", "success"),
        ("Use name", "success"),
        ("Done", "complete"),
    ]


async def test_a_user_steps_outcome_is_committed_before_the_next_user_step_runs(orch: Orchestrator) -> None:
    """A built-in step between two user steps does not carry the first one's outcome past the second."""
    pid = await start(orch, "tf_init_between")
    assert (await wait_status(orch, pid))["last_status"] == "completed"
    assert await commits_of(orch, pid) == [["Start", "Sync step", "Start"], ["Sync step", "Done"]]
