"""Parallel branches in distributed mode, against the real PostgreSQL and RabbitMQ and real worker processes: each
branch is its own message, claimed on its own row; the join happens once, whatever is duplicated, paused, aborted,
drained or SIGKILLed."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from dq_support import Queues, Worker
from parallelflows import assert_each_branch_retried_when_due
from support import http
from support.waiting import wait_status, wait_until

from orchestrator import services
from orchestrator.http import create_app
from orchestrator.persistence.records import Claim
from orchestrator.runtime.dramatiq_executor import DramatiqExecutor
from orchestrator.runtime.orchestrator import Orchestrator

Api = Callable[..., Awaitable[Orchestrator]]
Spawn = Callable[..., Worker]

WITH_PARALLELFLOWS = "testflows,dq_worker_flows,parallelflows"
TAKE_OVER = 40.0


async def steps_of(orch: Orchestrator, pid: UUID) -> list[tuple[str | None, str, str]]:
    rows = await orch.store.pool.fetch(
        "SELECT branch, name, status FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq", pid
    )
    return [(r["branch"], r["name"], r["status"]) for r in rows]


async def branch_statuses(orch: Orchestrator, pid: UUID) -> dict[str, str]:
    rows = await orch.store.pool.fetch("SELECT path, status FROM process_branches WHERE pid = $1", pid)
    return {r["path"]: r["status"] for r in rows}


def all_in(orch: Orchestrator, pid: UUID, status: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await branch_statuses(orch, pid)
        return len(found) == count and set(found.values()) == {status}

    return check


def fan_steps() -> list[tuple[str | None, str, str]]:
    """The rows of a completed `dq_gated_fan`, each step once."""
    rows: list[tuple[str | None, str, str]] = [(None, "Start", "success"), (None, "Fan", "success")]
    for i in range(3):
        rows += [(f"Fan[{i}]", "Gated", "success"), (f"Fan[{i}]", "Numbered", "success")]
    return sorted([*rows, (None, "Done", "complete")], key=str)


async def assert_fan_completed_once(orch: Orchestrator, pid: UUID) -> None:
    process = await wait_status(orch, pid, timeout=TAKE_OVER)
    assert process["last_status"] == "completed", process["failed_reason"]
    logged = await steps_of(orch, pid)
    assert sorted(logged, key=str) == fan_steps(), logged
    assert [r[1] for r in logged[-2:]] == ["Fan", "Done"]  # the join once, after every branch step
    assert process["current_state"]["fanned"] == [{"gated": True, "n": i} for i in range(3)]


async def test_joins_as_in_threadpool_mode(api: Api, spawn: Spawn, queues: Queues) -> None:
    orch = await api(WORKFLOW_MODULES=["testflows", "parallelflows"])
    await spawn(queues.workflows, processes=2, WORKFLOW_MODULES=WITH_PARALLELFLOWS).wait_ready(orch, 2)
    keys = ["pf_parallel", "pf_conflict", "pf_map", "pf_nested"]
    pids = [await services.start_process(key, [{}], orchestrator=orch) for key in keys]
    joined, conflict, mapped, nested = [await wait_status(orch, pid, timeout=30) for pid in pids]
    state = joined["current_state"]
    assert (state["a"], state["b"], state["shared"]) == (1, 2, 7) and "gone" not in state
    assert [r[1] for r in await steps_of(orch, pids[0]) if r[0] is None] == ["Start", "Prepare", "Fan out", "Done"]
    assert conflict["last_status"] == "failed"
    assert conflict["failed_reason"] == (
        "Branches 'Clash[0]' and 'Clash[1]' of the join set key 'shared' to different values"
    )
    assert mapped["current_state"]["results"] == [
        {"port": p.upper(), "position": i} for i, p in enumerate(["p1", "p2", "p3"])
    ]
    assert mapped["current_state"]["nothing"] == []
    assert nested["current_state"]["per_port"] == [
        {"port": "P1", "position": 0, "a": 1, "b": 2, "shared": 7},
        {"port": "P2", "position": 1, "a": 1, "b": 2, "shared": 7},
    ]
    assert await branch_statuses(orch, pids[0]) == dict.fromkeys(["Fan out[0]", "Fan out[1]", "Fan out[2]"], "stopped")


async def test_branches_of_one_process_run_on_two_workers_at_once(api: Api, spawn: Spawn, queues: Queues) -> None:
    orch = await api()
    await spawn(queues.workflows, processes=2, threads=1).wait_ready(orch, 2)
    pid = await services.start_process("dq_pair", [{}], orchestrator=orch)
    assert (await wait_status(orch, pid, timeout=30))["last_status"] == "completed"
    naps = await orch.store.pool.fetch(
        "SELECT started_at, completed_at, state->'worker' AS worker FROM process_steps WHERE pid = $1 AND name = 'Nap'",
        pid,
    )
    assert len(naps) == 2
    assert naps[0]["worker"] != naps[1]["worker"]  # two worker processes...
    assert max(r["started_at"] for r in naps) < min(r["completed_at"] for r in naps)  # ...at the same time
    join = await orch.store.pool.fetchval(
        "SELECT completed_at FROM process_steps WHERE pid = $1 AND name = 'Pair' AND branch IS NULL", pid
    )
    assert join >= max(r["completed_at"] for r in naps)


async def test_inputstep_and_callback_in_branches(api: Api, spawn: Spawn, queues: Queues) -> None:
    orch = await api(WORKFLOW_MODULES=["testflows", "parallelflows"])
    await spawn(queues.workflows, WORKFLOW_MODULES=WITH_PARALLELFLOWS).wait_ready(orch)
    pid = await services.start_process("pf_input", [{}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert (process["last_status"], process["last_step"], process["assignee"]) == ("suspended", "Approve", "NOC")
    await services.resume_process(pid, [{"approved": True}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert (process["last_status"], process["last_step"]) == ("suspended", "Comment")  # the other branch waits
    await services.resume_process(pid, [{"comment": "fine"}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert (state["approved"], state["checked"], state["comment"], state["a"]) == (True, True, "fine", 1)
    assert [r[1] for r in await steps_of(orch, pid)].count("Set A") == 1

    pid = await services.start_process("pf_callback", [{}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert process["last_status"] == "awaiting_callback"
    token = process["current_state"]["callback_route"].rsplit("/", 1)[1]
    await services.continue_with_callback(pid, token, {"ok": 7}, orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert process["last_status"] == "completed"
    assert (process["current_state"]["validated"], process["current_state"]["a"]) == (7, 1)


async def retry_the_failed_branch_alone(orch: Orchestrator, pid: UUID, gate: Path) -> list[tuple[str | None, str, str]]:
    """Open the gate and retry `dq_flaky`: it completes, the succeeded branch having run once, the failed one again.
    Returns the steps logged."""
    gate.touch()
    await services.resume_process(pid, [{}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert process["last_status"] == "completed"
    logged = await steps_of(orch, pid)
    assert [r for r in logged if r[0] == "Mixed[0]"] == [("Mixed[0]", "Quick branch", "success")]  # ran once
    assert [r[1:] for r in logged if r[0] == "Mixed[1]"] == [
        ("Flaky", "failed"),
        ("Flaky", "success"),
        ("After gate", "success"),
    ]
    return logged


async def test_a_failed_branch_is_retried_alone(api: Api, spawn: Spawn, queues: Queues, gate: Path) -> None:
    orch = await api()
    await spawn(queues.workflows, DQ_GATE=str(gate)).wait_ready(orch)
    pid = await services.start_process("dq_flaky", [{}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)
    assert process["last_status"] == "failed"
    assert (process["last_step"], process["failed_reason"]) == ("Flaky", "flaky branch failed: the gate is closed")
    await retry_the_failed_branch_alone(orch, pid, gate)


async def test_abort_stops_every_branch(api: Api, spawn: Spawn, queues: Queues, gate: Path) -> None:
    orch = await api()
    worker = spawn(queues.workflows, DQ_GATE=str(gate))
    await worker.wait_ready(orch)
    pid = await services.start_process("dq_gated_fan", [{}], orchestrator=orch)
    await wait_until(all_in(orch, pid, "running", 3), 30, "every branch to run its gated step")
    await services.abort_process(pid, orchestrator=orch)
    gate.touch()
    await wait_until(lambda: _logged(worker, "branch claim lost", 3), 30, "each branch to find its claim lost")
    assert (await services.get_process(pid, orchestrator=orch))["last_status"] == "aborted"
    assert not [r for r in await steps_of(orch, pid) if r[0] is not None]  # no branch committed after the abort


async def _logged(worker: Worker, event: str, count: int) -> bool:
    return len([e for e in worker.events() if e.get("event", "").startswith(event)]) >= count


async def test_pause_stops_every_branch_before_its_next_step(
    api: Api, spawn: Spawn, queues: Queues, gate: Path
) -> None:
    orch = await api()
    await spawn(queues.workflows, DQ_GATE=str(gate)).wait_ready(orch)
    pid = await services.start_process("dq_gated_fan", [{}], orchestrator=orch)
    await wait_until(all_in(orch, pid, "running", 3), 30, "every branch to run its gated step")
    await services.set_engine_lock(True, orchestrator=orch)
    gate.touch()
    await wait_until(all_in(orch, pid, "paused", 3), 30, "every branch to stop before its next step")
    assert sorted(r[1] for r in await steps_of(orch, pid) if r[0] is not None) == ["Gated"] * 3
    assert (await services.get_process(pid, orchestrator=orch))["last_status"] == "running"
    await services.set_engine_lock(False, orchestrator=orch)
    await assert_fan_completed_once(orch, pid)


async def test_a_duplicate_branch_message_runs_nothing_twice(
    api: Api, spawn: Spawn, queues: Queues, gate: Path
) -> None:
    orch = await api()
    worker = spawn(queues.workflows, DQ_GATE=str(gate))
    await worker.wait_ready(orch)
    pid = await services.start_process("dq_gated_fan", [{}], orchestrator=orch)
    await wait_until(all_in(orch, pid, "running", 3), 30, "every branch to run its gated step")
    await _duplicate_branch_messages(orch, pid)
    await wait_until(lambda: _logged(worker, "branch not claimed", 4), 30, "the duplicates to be dropped")
    gate.touch()
    await assert_fan_completed_once(orch, pid)
    await _duplicate_branch_messages(orch, pid)  # and once the fork has joined
    await wait_until(lambda: _logged(worker, "branch not claimed", 8), 30, "the late duplicates to be dropped")
    await assert_fan_completed_once(orch, pid)


async def _duplicate_branch_messages(orch: Orchestrator, pid: UUID) -> None:
    """One message per branch (as the sweeper sends), and one batch of all of them (as the fork sends)."""
    await orch.store.pool.execute(
        """INSERT INTO outbox (queue, actor, pid, run_by, branch)
           SELECT queue, actor, pid, run_by, path FROM process_branches WHERE pid = $1""",
        pid,
    )
    await orch.store.pool.execute(
        """INSERT INTO outbox (queue, actor, pid, run_by, branches)
           SELECT queue, actor, pid, run_by, array_agg(path ORDER BY path) FROM process_branches WHERE pid = $1
            GROUP BY queue, actor, pid, run_by""",
        pid,
    )
    orch.executor.wake()  # type: ignore[attr-defined]


async def test_sigterm_drains_every_branch(api: Api, spawn: Spawn, queues: Queues, gate: Path, opened: Path) -> None:
    orch = await api()
    draining = spawn(queues.workflows, DQ_GATE=str(gate))
    await draining.wait_ready(orch)
    pid = await services.start_process("dq_gated_fan", [{}], orchestrator=orch)
    await wait_until(all_in(orch, pid, "running", 3), 30, "every branch to run its gated step")
    await spawn(queues.workflows, DQ_GATE=str(opened)).wait_ready(orch)
    draining.proc.send_signal(signal.SIGTERM)
    await wait_until(lambda: _logged(draining, "waiting for running steps", 1), 30, "the drain to begin")
    gate.touch()  # the steps in flight finish and commit; each branch then goes to the other worker
    await assert_fan_completed_once(orch, pid)
    assert draining.proc.wait(30) == 0


async def test_sigkill_mid_branch_reruns_only_the_interrupted_step(
    api: Api, spawn: Spawn, queues: Queues, opened: Path
) -> None:
    orch = await api()
    victim = spawn(queues.workflows)  # its gate never opens: the gated branch runs until the kill
    victim_ids = await victim.wait_ready(orch)
    pids = list(await asyncio.gather(*(services.start_process("dq_fork", orchestrator=orch) for _ in range(3))))

    async def gated_branches_held_by_victim() -> bool:
        rows = await orch.store.pool.fetch(
            """SELECT b.lease_owner FROM process_branches b
                WHERE b.pid = ANY($1::uuid[]) AND b.path = 'Fork[1]' AND b.status = 'running'
                  AND EXISTS (SELECT 1 FROM process_steps s WHERE s.pid = b.pid AND s.branch = 'Fork[0]')""",
            pids,
        )
        return len(rows) == 3 and all(r["lease_owner"] in victim_ids for r in rows)

    await wait_until(gated_branches_held_by_victim, 15, "the victim to finish the quick branches")
    survivor = spawn(queues.workflows, DQ_GATE=str(opened))
    await survivor.wait_ready(orch)
    victim.kill()

    async def all_completed() -> bool:
        rows = await orch.store.pool.fetch("SELECT last_status FROM processes WHERE pid = ANY($1::uuid[])", pids)
        return all(r["last_status"] == "completed" for r in rows)

    settings = orch.settings
    await wait_until(all_completed, settings.LEASE_TTL_SECONDS + 2 * settings.SWEEP_INTERVAL_SECONDS + 20, "take-over")
    rows = await orch.store.pool.fetch(
        "SELECT pid, branch, name FROM process_steps WHERE pid = ANY($1::uuid[]) ORDER BY completed_at, seq", pids
    )
    for pid in pids:
        logged = [(r["branch"], r["name"]) for r in rows if r["pid"] == pid]
        expected: list[Any] = [
            (None, "Start"),
            ("Fork[0]", "Quick branch"),
            ("Fork[1]", "Gated"),
            ("Fork[1]", "After gate"),
            (None, "Fork"),
            (None, "Done"),
        ]
        assert sorted(logged, key=str) == sorted(expected, key=str), logged
        assert logged[-2:] == [(None, "Fork"), (None, "Done")]  # the join once, after every branch step
    state = (await services.get_process(pids[0], orchestrator=orch))["current_state"]
    assert (state["quick"], state["gated"], state["after_gate"]) == (True, True, True)


async def test_a_holder_dying_before_the_join_leaves_a_failed_branch_failed(
    api: Api, spawn: Spawn, queues: Queues, gate: Path, monkeypatch: Any
) -> None:
    """The worker that takes the process from the fork's last branch dies before it joins: the run that takes the
    process over joins from the rows (the process fails with the branch's reason, the failed step is not run
    again), and a retry then runs only the failed branch."""
    monkeypatch.setenv("DQ_GATE", str(gate))  # this test process plays the worker that dies: its gate is closed
    orch = await api()
    pid = await services.start_process("dq_flaky", [{}], orchestrator=orch)
    dead, ttl = "dead-worker", orch.engine.lease_ttl
    claim = await orch.store.claims.claim(pid, statuses=("created",), owner=dead, lease_ttl=ttl, user=None)
    assert claim is not None
    await orch.engine.run(claim, stopping=lambda: False, redispatch=orch.executor.resume)  # up to the fork
    branches = await orch.store.branch_claims.claim(pid, ["Mixed[0]", "Mixed[1]"], limit=2, owner=dead, lease_ttl=ttl)
    assert [b.branch for b in branches] == ["Mixed[0]", "Mixed[1]"]
    handed = [await orch.engine.run_branch(b, stopping=lambda: False, owner=dead) for b in branches]
    assert handed[0] is None and handed[1] is not None  # the last branch's stop handed the process over...
    failed_row = await orch.store.pool.fetchrow(
        "SELECT stepid, completed_at FROM process_steps WHERE pid = $1 AND name = 'Flaky'", pid
    )
    # ...and its holder dies here, before joining: the lease expires and a worker takes the process over.
    await spawn(queues.workflows, DQ_GATE=str(gate)).wait_ready(orch)
    process = await wait_status(orch, pid, timeout=TAKE_OVER)
    assert process["last_status"] == "failed"
    assert (process["last_step"], process["failed_reason"]) == ("Flaky", "flaky branch failed: the gate is closed")
    flaky = await orch.store.pool.fetch(
        "SELECT stepid, completed_at FROM process_steps WHERE pid = $1 AND name = 'Flaky'", pid
    )
    assert [tuple(r) for r in flaky] == [tuple(failed_row)]  # the failed branch did not run again
    logged = await retry_the_failed_branch_alone(orch, pid, gate)
    assert [r[1] for r in logged if r[0] is None] == ["Start", "Mixed", "Done"]


async def test_a_retry_policy_inside_a_branch(api: Api, spawn: Spawn, queues: Queues, gate: Path) -> None:
    """A branch step with a retry policy fails once: the fork settles `waiting` with the attempt's timer, which
    continues the process; only that step runs again, and the process completes."""
    orch = await api()
    await spawn(queues.workflows, DQ_GATE=str(gate)).wait_ready(orch)
    pid = await services.start_process("dq_retrying", [{}], orchestrator=orch)
    process = await wait_status(orch, pid, timeout=30)  # waiting, then (the timer) on to completed
    if process["last_status"] == "waiting":
        assert process["last_step"] == "Flaky once"
        process = await wait_status(orch, pid, {"completed", "failed"}, timeout=30)
    assert process["last_status"] == "completed", process["failed_reason"]
    logged = await steps_of(orch, pid)
    assert [r for r in logged if r[0] == "Retrying[0]"] == [("Retrying[0]", "Quick branch", "success")]
    assert [r[1:] for r in logged if r[0] == "Retrying[1]"] == [
        ("Flaky once", "waiting"),
        ("Flaky once", "success"),
        ("After gate", "success"),
    ]
    assert [r[1] for r in logged if r[0] is None] == ["Start", "Retrying", "Done"]


async def test_waiting_branches_each_run_again_at_their_own_time(
    api: Api, spawn: Spawn, queues: Queues, tmp_path: Path
) -> None:
    """Two branches run by a worker wait on retry timers of different delays: each runs again at its own time."""
    orch = await api(WORKFLOW_MODULES=["testflows", "parallelflows"])
    await spawn(queues.workflows, WORKFLOW_MODULES=WITH_PARALLELFLOWS, PF_MARKS=str(tmp_path)).wait_ready(orch)
    pid = await services.start_process("pf_retry_timers", [{}], orchestrator=orch)
    process = await wait_status(orch, pid, {"completed", "failed"}, timeout=30)
    assert process["last_status"] == "completed", process["failed_reason"]
    await assert_each_branch_retried_when_due(orch.store.pool, pid)


async def test_inputstep_in_a_branch_resumed_over_http(api: Api, spawn: Spawn, queues: Queues) -> None:
    """PUT /api/processes/{id}/resume of a process waiting in a branch, its branches run by a worker process: the
    form shown is the first waiting branch's, the resume goes to that branch, the other branch still waits."""
    orch = await api(WORKFLOW_MODULES=["testflows", "parallelflows"])
    worker = spawn(queues.workflows, WORKFLOW_MODULES=WITH_PARALLELFLOWS)
    worker_ids = await worker.wait_ready(orch)
    async with http.asgi_client(create_app(orchestrator=orch)) as client:
        pid = await http.start(client, "pf_input")
        process = await http.wait_status(client, pid, {"suspended"}, timeout=30)
        assert (process["last_step"], process["assignee"]) == ("Approve", "NOC")
        assert "approved" in process["form"]["properties"]
        steps = {(s["name"], s["status"], s.get("branch")) for s in process["steps"]}
        assert {
            ("Approve", "suspend", "Ask[0]"),
            ("Set A", "success", "Ask[1]"),
            ("Comment", "suspend", "Ask[2]"),
        } <= steps

        invalid = http.problem(await client.put(f"/api/processes/{pid}/resume", json=[{"approved": "maybe"}]), 400)
        assert {tuple(e["loc"]) for e in invalid["validation_errors"]} == {("approved",)}
        response = await client.put(f"/api/processes/{pid}/resume", json=[{"approved": True}])
        assert response.status_code == 204, response.text
        process = await http.wait_status(client, pid, {"suspended"}, timeout=30)
        assert process["last_step"] == "Comment" and "comment" in process["form"]["properties"]
        response = await client.put(f"/api/processes/{pid}/resume", json=[{"comment": "ok"}])
        assert response.status_code == 204, response.text
        process = await http.wait_status(client, pid, timeout=30)
    assert process["last_status"] == "completed"
    state = process["current_state"]
    assert (state["approved"], state["checked"], state["comment"], state["a"]) == (True, True, "ok", 1)
    logged = await steps_of(orch, UUID(pid))
    assert [r[1] for r in logged].count("Set A") == 1
    claimed = [e for e in worker.events("claimed") if e.get("branches")]
    assert claimed and {e["worker"] for e in claimed} <= set(worker_ids)  # the branches ran in the worker


class _DiesAfterTheDetach:
    """The branch slots of a worker that dies right after the detach statement committed its first batch's claims:
    it takes every branch offered and runs none."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.claimed: list[Claim] = []

    def reserve(self, wanted: int) -> int:
        return wanted

    def run_batch(self, claims: Sequence[Claim], reserved: int) -> None:
        self.claimed += claims


async def test_a_batch_claimed_at_the_fork_by_a_worker_that_dies_runs_once(
    api: Api, spawn: Spawn, queues: Queues, opened: Path
) -> None:
    """The worker that reaches the fork claims its first batch of branches in the detach statement and dies before
    running it: the batch's leases expire, the sweeper dispatches those branches again, and every step runs once."""
    orch = await api()
    executor = orch.executor
    assert isinstance(executor, DramatiqExecutor)
    pid = await services.start_process("dq_gated_fan", [{}], orchestrator=orch)
    dead = _DiesAfterTheDetach("dead-worker")
    claim = await orch.store.claims.claim(
        pid, statuses=("created",), owner=dead.owner, lease_ttl=orch.engine.lease_ttl, user=None
    )
    assert claim is not None
    executor.local = dead
    try:
        await orch.engine.run(claim, stopping=lambda: False, redispatch=executor.resume)  # up to the fork
    finally:
        executor.local = None
    assert [c.branch for c in dead.claimed] == ["Fan[0]", "Fan[1]"]  # the first batch, claimed in the detach...
    assert await branch_statuses(orch, pid) == {"Fan[0]": "running", "Fan[1]": "running", "Fan[2]": "dispatched"}
    # ...and its worker dies here: the other branch's message waits for a worker, the batch for its lease to expire.
    await spawn(queues.workflows, DQ_GATE=str(opened)).wait_ready(orch)
    await assert_fan_completed_once(orch, pid)
