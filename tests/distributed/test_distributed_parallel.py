"""Parallel branches in distributed mode: a worker SIGKILLed in the middle of a branch. Only the interrupted
branch step runs again (on the survivor, after the lease expires); every other step and the join run once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from dq_support import Queues, Worker
from support.waiting import wait_until

from orchestrator import services
from orchestrator.runtime.orchestrator import Orchestrator

Api = Callable[..., Awaitable[Orchestrator]]
Spawn = Callable[..., Worker]


async def test_sigkill_mid_branch_reruns_only_the_interrupted_step(
    api: Api, spawn: Spawn, queues: Queues, opened: Path
) -> None:
    orch = await api()
    victim = spawn(queues.workflows)  # its gate never opens: the gated branch runs until the kill
    victim_ids = await victim.wait_ready(orch)
    pids = list(await asyncio.gather(*(services.start_process("dq_fork", orchestrator=orch) for _ in range(3))))

    async def quick_branches_done_on_victim() -> bool:
        rows = await orch.store.pool.fetch(
            """SELECT p.lease_owner FROM processes p
                WHERE p.pid = ANY($1::uuid[]) AND p.last_status = 'running'
                  AND EXISTS (SELECT 1 FROM process_steps s WHERE s.pid = p.pid AND s.branch = 'Fork[0]')""",
            pids,
        )
        return len(rows) == 3 and all(r["lease_owner"] in victim_ids for r in rows)

    await wait_until(quick_branches_done_on_victim, 15, "the victim to finish the quick branches")
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
        assert sorted(logged, key=str) == sorted(
            [
                (None, "Start"),
                ("Fork[0]", "Quick branch"),
                ("Fork[1]", "Gated"),
                ("Fork[1]", "After gate"),
                (None, "Fork"),
                (None, "Done"),
            ],
            key=str,
        ), logged
        assert logged[-2:] == [(None, "Fork"), (None, "Done")]  # the join once, after every branch step
    state = (await services.get_process(pids[0], orchestrator=orch))["current_state"]
    assert (state["quick"], state["gated"], state["after_gate"]) == (True, True, True)
