"""Distributed mode end to end: an in-process API (EXECUTOR=dramatiq) and real `dramatiq orchestrator.actors`
worker subprocesses on the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from uuid import UUID

import pytest
from dq_support import (
    Queues,
    Worker,
    assert_each_step_once,
    statuses,
)
from support.processes import DRAMATIQ
from support.tcpproxy import TcpProxy
from support.waiting import wait_until

from brokers.dramatiq import encode_message, queue_declarations
from brokers.rabbitmq import Publisher
from orchestrator import services
from orchestrator.exceptions import EngineLockedError
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services import queue_status

pytestmark = pytest.mark.slow

Api = Callable[..., Awaitable[Orchestrator]]
Spawn = Callable[..., Worker]


async def start_many(orch: Orchestrator, workflow: str, count: int) -> list[UUID]:
    return list(await asyncio.gather(*(services.start_process(workflow, orchestrator=orch) for _ in range(count))))


def ran_by(worker: Worker) -> set[str]:
    return {e["process_id"] for e in worker.events("claimed")}


async def logged_claims(workers: Sequence[Worker], count: int) -> bool:
    """The workers' logs reach the test through Dramatiq's master process, a little later than the database."""
    return sum(len(w.events("claimed")) for w in workers) >= count


async def assert_claimed_once(orch: Orchestrator, pids: list[UUID]) -> None:
    """Every claim increments the fencing token: a token of 1 means the process was run by exactly one claim."""
    tokens = await orch.store.pool.fetch("SELECT fencing_token FROM processes WHERE pid = ANY($1::uuid[])", pids)
    assert [r["fencing_token"] for r in tokens] == [1] * len(pids)


async def test_200_processes_across_queue_workers(api: Api, spawn: Spawn, queues: Queues) -> None:
    orch = await api()
    workflows_only = spawn(queues.workflows, threads=8)
    tasks_only = spawn(queues.tasks, threads=8)
    both = spawn(queues.workflows, queues.tasks, processes=2, threads=8)
    await workflows_only.wait_ready(orch)
    await tasks_only.wait_ready(orch)
    await both.wait_ready(orch, processes=2)
    status = await services.worker_status(orchestrator=orch)
    assert status["executor_type"] == "dramatiq"
    assert status["number_of_workers_online"] == 4
    per_queue = await queue_status(orch)
    assert per_queue[queues.workflows]["workers_online"] == 3
    assert per_queue[queues.tasks]["workers_online"] == 3

    started = time.monotonic()
    flows, tasks = await asyncio.gather(start_many(orch, "tf_simple", 100), start_many(orch, "tf_slow_task", 100))

    async def all_completed() -> bool:
        return (await statuses(orch, flows + tasks))["completed"] == 200

    await wait_until(all_completed, 60, "200 processes to complete")
    elapsed = time.monotonic() - started
    await assert_each_step_once(orch, flows + tasks)
    await assert_claimed_once(orch, flows + tasks)
    # Each queue's processes ran only on workers consuming that queue; every worker command took part.
    workers = (workflows_only, tasks_only, both)
    await wait_until(lambda: logged_claims(workers, 200), 10, "the workers' logs")
    assert ran_by(workflows_only) <= {str(p) for p in flows}
    assert ran_by(tasks_only) <= {str(p) for p in tasks}
    assert ran_by(workflows_only) and ran_by(tasks_only) and ran_by(both)
    status = await services.worker_status(orchestrator=orch)
    assert (status["number_of_queued_jobs"], status["number_of_running_jobs"]) == (0, 0)
    print(f"200 processes completed in {elapsed:.2f}s")


async def test_target_queue_override(api: Api, spawn: Spawn, queues: Queues) -> None:
    """TARGET_QUEUES (orchestrator-core's CELERY_TARGET_QUEUES) routes a target to its own queue and workers."""
    reconcile = queues.new("r")
    target_queues = f'{{"CREATE": "{reconcile}"}}'
    orch = await api(TARGET_QUEUES={"CREATE": reconcile})
    plain = spawn(queues.workflows, TARGET_QUEUES=target_queues)
    dedicated = spawn(reconcile, TARGET_QUEUES=target_queues)
    await plain.wait_ready(orch)
    await dedicated.wait_ready(orch)
    created = await start_many(orch, "tf_simple", 5)  # target CREATE → the reconcile queue
    modified = [await services.start_process("tf_input", [{"size": 1}], orchestrator=orch) for _ in range(3)]

    async def settled() -> bool:
        counts = await statuses(orch, created + modified)
        return counts["completed"] == 5 and counts["suspended"] == 3

    await wait_until(settled, 20, "processes to reach their queues' workers")
    await wait_until(lambda: logged_claims([plain, dedicated], 8), 10, "the workers' logs")
    assert ran_by(dedicated) == {str(p) for p in created}
    assert ran_by(plain) == {str(p) for p in modified}
    # A user resume validates in the API, marks `resumed` and dispatches resume_workflow to the same queue.
    for pid in modified:
        await services.resume_process(pid, [{"name": "ada"}], user="ada", orchestrator=orch)

    async def resumed_and_completed() -> bool:
        return (await statuses(orch, modified))["completed"] == 3

    await wait_until(resumed_and_completed, 20, "the resumed processes to complete")
    await assert_each_step_once(orch, created + modified)
    resumed_runs = [e for e in plain.events("claimed") if e["run"] == "resume"]
    assert {e["process_id"] for e in resumed_runs} == {str(p) for p in modified}


async def sigkill_mid_step(orch: Orchestrator, spawn: Spawn, queues: Queues, opened: Path, **timings: str) -> float:
    """Four processes in a step on one worker, SIGKILLed: all complete on another; return the re-dispatch time."""
    victim = spawn(queues.workflows, **timings)  # its gate never opens: the step runs until the kill
    victim_ids = await victim.wait_ready(orch)
    pids = await start_many(orch, "dq_gated", 4)

    async def all_in_slow_step_on_victim() -> bool:
        rows = await orch.store.pool.fetch(
            "SELECT lease_owner, last_step FROM processes WHERE pid = ANY($1::uuid[]) AND last_status = 'running'",
            pids,
        )
        # In the gated step: running, no step written yet (the built-in `Start` is written with the gated step's row).
        return len(rows) == 4 and all(r["lease_owner"] in victim_ids and r["last_step"] is None for r in rows)

    await wait_until(all_in_slow_step_on_victim, 15, "the victim to run all four processes")
    survivor = spawn(queues.workflows, DQ_GATE=str(opened), **timings)
    survivor_ids = await survivor.wait_ready(orch)
    victim.kill()
    killed_at = time.monotonic()

    async def all_taken_over() -> bool:
        rows = await orch.store.pool.fetch(
            "SELECT last_status, lease_owner FROM processes WHERE pid = ANY($1::uuid[])", pids
        )
        return all(r["last_status"] == "completed" or r["lease_owner"] in survivor_ids for r in rows)

    settings = orch.settings
    bound = settings.LEASE_TTL_SECONDS + 2 * settings.SWEEP_INTERVAL_SECONDS + 3
    await wait_until(all_taken_over, bound, "the survivor to take over")
    redispatched = time.monotonic() - killed_at

    async def all_completed() -> bool:
        return (await statuses(orch, pids))["completed"] == 4

    await wait_until(all_completed, 20, "the taken-over processes to complete")
    await assert_each_step_once(orch, pids)  # the interrupted step ran again, but was logged once
    await wait_until(lambda: logged_claims([survivor], 4), 10, "the survivor's log")
    assert ran_by(survivor) == {str(p) for p in pids}
    assert {e["run"] for e in survivor.events("claimed")} == {"resume"}
    # The victim had acked its four messages when it claimed: RabbitMQ redelivered none of them to the survivor.
    assert not [e for e in survivor.events() if str(e.get("event")).startswith("not claimed")]
    tokens = await orch.store.pool.fetch("SELECT fencing_token FROM processes WHERE pid = ANY($1::uuid[])", pids)
    assert [r["fencing_token"] for r in tokens] == [3] * 4  # claim, take-over (fences the victim out), re-claim
    print(f"re-dispatched {redispatched:.2f}s after SIGKILL (LEASE_TTL {settings.LEASE_TTL_SECONDS}s)")
    return redispatched


async def test_sigkill_mid_step_is_taken_over(api: Api, spawn: Spawn, queues: Queues, opened: Path) -> None:
    orch = await api()
    await sigkill_mid_step(orch, spawn, queues, opened)


async def test_sigkill_default_timings_within_60s(api: Api, spawn: Spawn, queues: Queues, opened: Path) -> None:
    """The documented bound with the default LEASE_TTL_SECONDS (20) and SWEEP_INTERVAL_SECONDS (5)."""
    defaults = {"LEASE_TTL_SECONDS": "20", "SWEEP_INTERVAL_SECONDS": "5"}
    orch = await api(LEASE_TTL_SECONDS=20, SWEEP_INTERVAL_SECONDS=5)
    assert await sigkill_mid_step(orch, spawn, queues, opened, **defaults) < 60


async def test_sigterm_drains_and_another_worker_continues(api: Api, spawn: Spawn, queues: Queues, gate: Path) -> None:
    # A long lease: the processes can only continue this fast if the drain handed them back (not by take-over).
    lease = {"LEASE_TTL_SECONDS": "60"}
    orch = await api(LEASE_TTL_SECONDS=60)
    draining = spawn(queues.workflows, DQ_GATE=str(gate), **lease)
    draining_ids = await draining.wait_ready(orch)
    pids = await start_many(orch, "dq_gated", 4)

    async def draining_logged(event: str) -> bool:
        return bool(draining.events(event))

    async def all_running_on_draining() -> bool:
        rows = await orch.store.pool.fetch(
            "SELECT lease_owner FROM processes WHERE pid = ANY($1::uuid[]) AND last_status = 'running'", pids
        )
        return len(rows) == 4 and all(r["lease_owner"] in draining_ids for r in rows)

    async def still_in_slow_step() -> bool:
        rows = await orch.store.pool.fetch("SELECT last_step FROM processes WHERE pid = ANY($1::uuid[])", pids)
        return [r["last_step"] for r in rows] == [None] * 4  # `Start` is written with the gated step's row

    await wait_until(all_running_on_draining, 15, "the draining worker to run all four processes")
    successor = spawn(queues.workflows, DQ_GATE=str(gate), **lease)
    await successor.wait_ready(orch)
    assert await still_in_slow_step()
    signalled = time.monotonic()
    draining.proc.send_signal(signal.SIGTERM)
    # The drain has begun: now let the current steps finish.
    await wait_until(lambda: draining_logged("waiting for running steps to finish"), 10, "the drain to begin")
    gate.touch()
    returncode = await asyncio.to_thread(draining.proc.wait, 30)
    exited = time.monotonic() - signalled
    assert returncode == 0, draining.log.read_text()[-3000:]
    assert exited < orch.settings.SHUTDOWN_TIMEOUT_SECONDS + 5

    async def all_completed() -> bool:
        return (await statuses(orch, pids))["completed"] == 4

    await wait_until(all_completed, 20, "the drained processes to complete on the successor")
    assert time.monotonic() - signalled < 60  # well before the 60 s lease could have expired
    await assert_each_step_once(orch, pids)
    await wait_until(lambda: logged_claims([successor], 4), 10, "the successor's log")
    stopped = draining.events("run stopped before the next step")
    assert {e["process_id"] for e in stopped} == {str(p) for p in pids}
    assert {e["reason"] for e in stopped} == {"shutdown"}
    assert ran_by(successor) == {str(p) for p in pids}
    assert draining.events("worker closed")
    online = await orch.store.pool.fetchval("SELECT count(*) FROM workers WHERE worker_id = ANY($1)", draining_ids)
    assert online == 0  # deregistered at shutdown


async def test_sigterm_does_not_wait_for_a_step_longer_than_the_shutdown_timeout(
    api: Api, spawn: Spawn, queues: Queues, opened: Path
) -> None:
    """The step is abandoned: the worker exits promptly, and the process is taken over once its lease expires."""
    orch = await api()
    stuck = spawn(queues.workflows, SHUTDOWN_TIMEOUT_SECONDS="1")  # its gate never opens
    stuck_ids = await stuck.wait_ready(orch)
    pids = await start_many(orch, "dq_gated", 2)

    async def running_on_stuck() -> bool:
        rows = await orch.store.pool.fetch("SELECT lease_owner FROM processes WHERE pid = ANY($1::uuid[])", pids)
        return all(r["lease_owner"] in stuck_ids for r in rows)

    await wait_until(running_on_stuck, 15, "the processes to run")
    successor = spawn(queues.workflows, DQ_GATE=str(opened))
    await successor.wait_ready(orch)
    signalled = time.monotonic()
    stuck.proc.send_signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(stuck.proc.wait, 30)
    assert returncode == 0, stuck.log.read_text()[-3000:]
    assert time.monotonic() - signalled < 1 + 8  # SHUTDOWN_TIMEOUT_SECONDS, Dramatiq's own shutdown, the exit grace

    async def all_completed() -> bool:
        return (await statuses(orch, pids))["completed"] == 2

    await wait_until(all_completed, 20, "the abandoned processes to complete on the successor")
    await assert_each_step_once(orch, pids)
    closed = stuck.events("worker closed")
    assert closed and closed[0]["abandoned_runs"] == 2


async def test_rabbitmq_outage_during_submissions(api: Api, spawn: Spawn, queues: Queues, proxy: TcpProxy) -> None:
    """API and workers reach RabbitMQ through a proxy; cutting it is an outage for all of them."""
    orch = await api(BROKER_URL=proxy.url)
    worker = spawn(queues.workflows, queues.tasks, threads=8, BROKER_URL=proxy.url, TF_SLOW_SECONDS="1")
    await worker.wait_ready(orch)
    before = await start_many(orch, "tf_slow", 5)

    async def running(pids: list[UUID]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            counts = await statuses(orch, pids)
            return counts["running"] + counts["completed"] == len(pids)

        return check

    await wait_until(await running(before), 15, "the first processes to start")
    await proxy.cut()
    submit_started = time.monotonic()
    during = await start_many(orch, "tf_simple", 20) + await start_many(orch, "tf_slow_task", 10)
    submit_time = time.monotonic() - submit_started
    assert submit_time < 5, "submissions must not wait for the broker"
    outbox = await orch.store.pool.fetchval("SELECT count(*) FROM outbox WHERE pid = ANY($1::uuid[])", during)
    assert outbox == 30
    assert (await statuses(orch, during))["created"] == 30

    async def first_ones_completed() -> bool:  # the database is up: running processes finish during the outage
        return (await statuses(orch, before))["completed"] == 5

    await wait_until(first_ones_completed, 15, "the running processes to finish during the outage")
    await asyncio.sleep(3)  # let the outage last through a few relay back-offs and consumer restarts
    assert (await statuses(orch, during))["created"] == 30
    await proxy.reopen()
    reopened = time.monotonic()

    async def all_completed() -> bool:
        return (await statuses(orch, before + during))["completed"] == 35

    await wait_until(all_completed, 45, "every process to complete after RabbitMQ is back")
    await assert_each_step_once(orch, before + during)
    assert await orch.store.pool.fetchval("SELECT count(*) FROM outbox") == 0
    print(f"submitted 30 during the outage in {submit_time:.2f}s; all done {time.monotonic() - reopened:.2f}s after")


async def test_duplicated_message_runs_once(api: Api, spawn: Spawn, queues: Queues, dq_env: dict[str, str]) -> None:
    orch = await api()
    first = spawn(queues.workflows, TF_SLOW_SECONDS="1")
    second = spawn(queues.workflows, TF_SLOW_SECONDS="1")
    await first.wait_ready(orch)
    await second.wait_ready(orch)
    # Processes created without a dispatch (a store-only program: as rows another system wrote would be)...
    creator = await api(EXECUTOR="threadpool", run_processes=False)
    pids = await start_many(creator, "tf_slow", 3)
    # ...each dispatched by the very same message, published twice, plus one stale resume.
    bodies = [encode_message(queues.workflows, "new_workflow", [str(pid), "SYSTEM"]) for pid in pids]
    stale = encode_message(queues.workflows, "resume_workflow", [str(pids[0]), "SYSTEM"])
    async with Publisher(dq_env["BROKER_URL"], declarations=queue_declarations) as publisher:
        await publisher.publish_batch([(queues.workflows, body) for body in bodies for _ in range(2)])
        await publisher.publish_batch([(queues.workflows, stale)])

    async def all_completed() -> bool:
        return (await statuses(orch, pids))["completed"] == 3

    await wait_until(all_completed, 20, "the processes to complete")
    await assert_each_step_once(orch, pids)

    async def all_acknowledged() -> bool:
        refused = [e for w in (first, second) for e in w.events() if str(e.get("event", "")).startswith("not claimed")]
        return len(refused) == 4

    await wait_until(all_acknowledged, 10, "the duplicates and the stale message to be refused")
    await wait_until(lambda: logged_claims([first, second], 3), 10, "the workers' logs")
    claims = Counter(e["process_id"] for w in (first, second) for e in w.events("claimed"))
    assert claims == Counter({str(p): 1 for p in pids})


async def test_pause_across_workers(api: Api, spawn: Spawn, queues: Queues, gate: Path) -> None:
    orch = await api()
    workers = [spawn(queues.workflows, DQ_GATE=str(gate)) for _ in range(2)]
    for worker in workers:
        await worker.wait_ready(orch)
    pids = await start_many(orch, "dq_gated", 6)

    async def all_in_slow_step() -> bool:
        rows = await orch.store.pool.fetch(
            "SELECT last_status, last_step FROM processes WHERE pid = ANY($1::uuid[])", pids
        )
        return [(r["last_status"], r["last_step"]) for r in rows] == [("running", None)] * 6  # `Start`: as above

    await wait_until(all_in_slow_step, 15, "six processes to run")
    engine = await services.set_engine_lock(True, orchestrator=orch)
    assert engine["global_status"] == "PAUSING"  # six steps are running
    with pytest.raises(EngineLockedError):
        await services.start_process("tf_simple", orchestrator=orch)
    gate.touch()  # the current steps finish

    async def paused() -> bool:
        return (await services.engine_status(orchestrator=orch))["global_status"] == "PAUSED"

    await wait_until(paused, 15, "every worker to stop before its next step")
    assert (await statuses(orch, pids))["resumed"] == 6
    steps = await orch.store.pool.fetch(
        "SELECT pid, array_agg(name ORDER BY completed_at, seq) AS steps FROM process_steps "
        "WHERE pid = ANY($1::uuid[]) GROUP BY pid",
        pids,
    )
    assert all(list(r["steps"]) == ["Start", "Gated"] for r in steps)  # the current step finished, no next one
    await wait_until(lambda: logged_claims(workers, 6), 10, "the workers' logs")
    ran = {e["process_id"] for w in workers for e in w.events("claimed")}
    assert ran == {str(p) for p in pids}
    assert all(ran_by(w) for w in workers)  # both workers took part

    await services.set_engine_lock(False, orchestrator=orch)

    async def all_completed() -> bool:
        return (await statuses(orch, pids))["completed"] == 6

    await wait_until(all_completed, 20, "the processes to complete after unpause")
    await assert_each_step_once(orch, pids)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [("LEASE_TTL_SECONDS", "-1", "LEASE_TTL_SECONDS"), ("WORKFLOW_MODULES", "no_such.module", "no_such.module")],
)
def test_bad_configuration_exits_2_with_one_line(dq_env: dict[str, str], setting: str, value: str, named: str) -> None:
    done = subprocess.run(
        [DRAMATIQ, "orchestrator.actors", "-p", "1", "-t", "1", "-Q", "nothing"],
        env={**dq_env, setting: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("orchestrator.actors:")]
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
