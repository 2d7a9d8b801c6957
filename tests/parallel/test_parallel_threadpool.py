"""Parallel branches in the threadpool executor against a real PostgreSQL: the join, waiting and failing branches,
retry, abort and pause."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from parallelflows import RUNS, SWITCHES, assert_each_branch_retried_when_due
from support.waiting import wait_status, wait_until

from orchestrator import services
from orchestrator.runtime.orchestrator import Orchestrator


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RUNS.clear()
    SWITCHES.update(fail=True, hold=False)
    yield
    SWITCHES.update(hold=False)


async def start(orch: Orchestrator, key: str) -> UUID:
    return await services.start_process(key, [{}], user="alice", orchestrator=orch)


async def branch_rows(orch: Orchestrator, pid: UUID) -> list[tuple[str | None, str, str]]:
    rows = await orch.store.pool.fetch(
        "SELECT branch, name, status FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq", pid
    )
    return [(r["branch"], r["name"], r["status"]) for r in rows]


async def test_parallel_joins_changes_in_branch_order(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_parallel")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert (state["a"], state["b"], state["shared"]) == (1, 2, 7)
    assert "gone" not in state  # removed by branch 1
    rows = await branch_rows(orch, pid)
    assert [r[1] for r in rows if r[0] is None] == ["Start", "Prepare", "Fan out", "Done"]
    assert sorted(r for r in rows if r[0] is not None) == [
        ("Fan out[0]", "Set A", "success"),
        ("Fan out[1]", "Agree", "success"),
        ("Fan out[1]", "Set B", "success"),
        ("Fan out[2]", "Agree", "success"),
    ]
    # the flat step list still reads as orchestrator-core's, each branch step tagged with its branch
    assert {(s["name"], s["branch"]) for s in process["steps"]} >= {("Set A", "Fan out[0]"), ("Fan out", None)}


async def test_conflicting_branches_fail_the_join_naming_key_and_branches(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_conflict")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "failed"
    assert (
        process["failed_reason"]
        == "Branches 'Clash[0]' and 'Clash[1]' of the join set key 'shared' to different values"
    )
    assert process["last_step"] == "Clash"


async def test_map_parallel_collects_changes_in_item_order_and_an_empty_list_joins_at_once(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_map")
    state = (await wait_status(orch, pid))["current_state"]
    assert state["results"] == [
        {"port": "P1", "position": 0},
        {"port": "P2", "position": 1},
        {"port": "P3", "position": 2},
    ]
    assert state["nothing"] == []
    assert "item" not in state and "item_index" not in state


async def test_nested_forks_join_inside_out(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_nested")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert (state["a"], state["b"], state["shared"]) == (1, 2, 7)
    assert state["per_port"] == [
        {"port": "P1", "position": 0, "a": 1, "b": 2, "shared": 7},
        {"port": "P2", "position": 1, "a": 1, "b": 2, "shared": 7},
    ]
    branches = {r[0] for r in await branch_rows(orch, pid)}
    assert {"Outer[0]/Inner[1]", "Outer[1]/Each[1]/Inner[0]"} <= branches


async def test_more_items_than_max_branches_fail_before_any_branch_runs(orch: Orchestrator) -> None:
    pid = await services.start_process("pf_held", [{}], orchestrator=orch)
    assert (await wait_status(orch, pid))["last_status"] == "completed"  # 3 items: within MAX_BRANCHES=50
    orch.engine.max_branches = 2
    try:
        pid = await services.start_process("pf_held", [{}], orchestrator=orch)
        process = await wait_status(orch, pid)
    finally:
        orch.engine.max_branches = 50
    assert process["last_status"] == "failed"
    assert process["failed_reason"] == "'Hold' forks 3 branches, more than MAX_BRANCHES=2; none ran"
    assert not [r for r in await branch_rows(orch, pid) if r[0] is not None]


async def test_inputstep_in_a_branch_suspends_without_stopping_siblings(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_input")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "suspended"
    assert process["last_step"] == "Approve" and process["assignee"] == "NOC"
    assert "approved" in process["form"]["properties"]
    assert RUNS["Set A"] == 1  # the sibling ran to its end
    await services.resume_process(pid, [{"approved": True}], user="bob", orchestrator=orch)
    process = await wait_status(orch, pid)
    # branch 2 still waits: the process stays suspended, now on its form
    assert process["last_status"] == "suspended" and process["last_step"] == "Comment"
    assert "comment" in process["form"]["properties"]
    assert RUNS["After approval"] == 1
    await services.resume_process(pid, [{"comment": "fine"}], user="bob", orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert (state["approved"], state["checked"], state["comment"], state["a"]) == (True, True, "fine", 1)
    assert RUNS == {"Set A": 1, "After approval": 1}


async def test_failed_branch_is_retried_alone(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_retry")
    process = await wait_status(orch, pid)
    assert process["last_status"] == "failed"
    assert process["failed_reason"] == "flaky branch failed" and process["last_step"] == "Flaky"
    assert "ValueError" in process["traceback"]
    assert RUNS == {"Set A": 1, "Flaky": 1}  # the sibling finished
    SWITCHES["fail"] = False
    await services.resume_process(pid, [{}], orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert RUNS == {"Set A": 1, "Flaky": 2, "Set B": 1}
    assert process["current_state"]["flaky"] == "ok"


async def test_retry_policy_inside_a_branch(orch: Orchestrator) -> None:
    """A branch step's retry policy: the fork settles `waiting` (once its sibling ended) with the attempt's timer,
    which continues the process; only that step runs again."""
    pid = await start(orch, "pf_retry_policy")
    process = await wait_status(orch, pid)
    if process["last_status"] == "waiting":
        assert process["last_step"] == "Retried"
        process = await wait_status(orch, pid, {"completed", "failed"})
    assert process["last_status"] == "completed", process["failed_reason"]
    assert RUNS == {"Retried": 2, "Slow sibling": 1}
    assert (process["current_state"]["retried"], process["current_state"]["slow"]) == (True, True)


async def test_waiting_branches_each_run_again_at_their_own_time(
    orch: Orchestrator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two branches wait on retry timers of different delays: the process's timer is the earlier one's, only that
    branch runs again when it fires, and the timer is set again for the other, which runs at its own time."""
    monkeypatch.setenv("PF_MARKS", str(tmp_path))
    pid = await start(orch, "pf_retry_timers")
    process = await wait_status(orch, pid, {"completed", "failed"})
    assert process["last_status"] == "completed", process["failed_reason"]
    await assert_each_branch_retried_when_due(orch.store.pool, pid)


async def _held(orch: Orchestrator, pid: UUID) -> bool:
    return all(RUNS[f"Held {i}"] == 1 for i in range(3))


async def test_abort_stops_every_branch(orch: Orchestrator) -> None:
    SWITCHES["hold"] = True
    pid = await start(orch, "pf_held")
    await wait_until(lambda: _held(orch, pid), what="every branch to be in its held step")
    await services.abort_process(pid, user="carol", orchestrator=orch)
    SWITCHES["hold"] = False
    process = await wait_status(orch, pid)
    assert process["last_status"] == "aborted"
    await wait_until(lambda: _no_running(orch), what="the run to end")
    assert not [r for r in await branch_rows(orch, pid) if r[0] is not None]  # no branch committed after abort
    assert not any(RUNS[f"After held {i}"] for i in range(3))


async def _no_running(orch: Orchestrator) -> bool:
    return not orch.executor.runner.active  # type: ignore[attr-defined]


async def test_pause_stops_every_branch_before_its_next_step_and_unpause_continues(orch: Orchestrator) -> None:
    SWITCHES["hold"] = True
    pid = await start(orch, "pf_held")
    await wait_until(lambda: _held(orch, pid), what="every branch to be in its held step")
    await services.set_engine_lock(True, orchestrator=orch)
    SWITCHES["hold"] = False
    process = await wait_status(orch, pid, {"resumed"})
    rows = await branch_rows(orch, pid)
    assert sorted(r[1] for r in rows if r[0] is not None) == ["Held", "Held", "Held"]
    assert not any(RUNS[f"After held {i}"] for i in range(3))
    await services.set_engine_lock(False, orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert process["current_state"]["held_results"] == [{"held": i, "after": i} for i in range(3)]
    assert all(RUNS[f"Held {i}"] == 1 and RUNS[f"After held {i}"] == 1 for i in range(3))


async def test_the_examples_fork_and_join(orch: Orchestrator) -> None:
    pid = await services.start_process("provision_port_parallel", [{"customer": "ACME"}], orchestrator=orch)
    state = (await wait_status(orch, pid))["current_state"]
    assert (state["vlan"], state["inventory"]) == (100, "updated")
    assert [s["site"] for s in state["sites"]] == ["ams", "fra", "lon"]
    pid = await services.start_process("fan_out", [{"branches": 20}], orchestrator=orch)
    state = (await wait_status(orch, pid))["current_state"]
    assert state["results"] == [{"done": i} for i in range(20)]


async def test_a_duplicate_dispatch_during_a_fork_runs_nothing_twice(orch: Orchestrator) -> None:
    SWITCHES["hold"] = True
    pid = await start(orch, "pf_held")
    await wait_until(lambda: _held(orch, pid), what="every branch to be in its held step")
    runner = orch.executor.runner  # type: ignore[attr-defined]
    assert await runner.run(pid, "new") is None  # a redelivered start finds the process running: not claimed
    assert await runner.run(pid, "resume") is None
    SWITCHES["hold"] = False
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    assert all(RUNS[f"Held {i}"] == 1 and RUNS[f"After held {i}"] == 1 for i in range(3))
    rows = await branch_rows(orch, pid)
    assert len(rows) == len(set(rows)) and [r for r in rows if r[0] is None and r[1] == "Hold"] == [
        (None, "Hold", "success")
    ]


async def test_callback_step_in_a_branch(orch: Orchestrator) -> None:
    pid = await start(orch, "pf_callback")
    process = await wait_status(orch, pid)
    assert (process["last_status"], process["last_step"]) == ("awaiting_callback", "Callback")
    token = process["current_state"]["callback_route"].rsplit("/", 1)[1]
    await services.report_callback_progress(pid, token, "half way", orchestrator=orch)
    await services.continue_with_callback(pid, token, {"ok": 7}, orchestrator=orch)
    process = await wait_status(orch, pid)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert (state["validated"], state["a"]) == (7, 1)
    assert "__callback_token" not in state
    assert RUNS == {"Set A": 1}
