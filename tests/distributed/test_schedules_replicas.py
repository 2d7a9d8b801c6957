"""One interval schedule, two API replicas and two Dramatiq workers (real subprocesses): one process per tick."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dq_support import Worker
from support.waiting import wait_until

from orchestrator.runtime.orchestrator import Orchestrator

ORCHESTRATOR = str(Path(sys.executable).with_name("orchestrator"))
TICKS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def replicas(dq_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """`replicas(env)` starts `orchestrator serve` (EXECUTOR=dramatiq) and returns its base URL."""
    started: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str]) -> str:
        port = _free_port()
        with (tmp_path / f"api-{len(started)}.log").open("w") as out:
            proc = subprocess.Popen(
                [ORCHESTRATOR, "serve", "--port", str(port)],
                env={**env, "EXECUTOR": "dramatiq"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                text=True,
            )
        started.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


async def _healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url) as c:
            return (await c.get("/api/health")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_two_replicas_and_two_workers_start_one_process_per_tick(
    api: Callable[..., object],
    spawn: Callable[..., Worker],
    replicas: Callable[[dict[str, str]], str],
    dq_env: dict[str, str],
    queues: object,
) -> None:
    env = {**dq_env, "WORKFLOW_MODULES": "testflows,dq_worker_flows,timeflows"}
    workers = [spawn(queues.tasks, queues.workflows, **env) for _ in range(2)]  # type: ignore[attr-defined]
    urls = [replicas(env) for _ in range(2)]
    for url in urls:
        await wait_until(lambda url=url: _healthy(url), timeout=30, what=f"the API at {url}")
    reader: Orchestrator = await api(run_processes=False)  # type: ignore[operator]
    for worker in workers:
        await worker.wait_ready(reader)

    async with httpx.AsyncClient(base_url=urls[0]) as client:
        created = await client.post(
            "/api/schedules/",
            json={"workflow_name": "time_tick", "name": "every second", "trigger": "interval",
                  "trigger_kwargs": {"seconds": 1}},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        schedule_id = created.json()["schedule_id"]

        async def ticks_completed() -> bool:
            done = await reader.store.pool.fetchval(
                "SELECT count(*) FROM schedule_runs r JOIN processes p USING (pid)"
                " WHERE r.schedule_id = $1 AND p.last_status = 'completed'",
                schedule_id,
            )
            return bool(done >= TICKS)

        await wait_until(ticks_completed, timeout=60, what=f"{TICKS} ticks to complete")
        deleted = await client.request("DELETE", "/api/schedules/", json={"schedule_id": schedule_id})
        assert deleted.status_code == 204, deleted.text
        listed = await client.get(f"/api/schedules/{schedule_id}")
        assert listed.status_code == 404

    rows = await reader.store.pool.fetch(
        "SELECT r.tick_at, p.created_by FROM schedule_runs r JOIN processes p USING (pid)"
        " WHERE r.schedule_id = $1 ORDER BY r.tick_at",
        schedule_id,
    )
    ticks = [r["tick_at"] for r in rows]
    assert len(ticks) == len(set(ticks)), "a tick started more than one process"
    first = ticks[:TICKS]
    assert [(t - first[0]).total_seconds() for t in first] == [float(i) for i in range(TICKS)]
    assert {r["created_by"] for r in rows} == {"schedule:every second"}
    total = await reader.store.pool.fetchval(
        "SELECT count(*) FROM processes p JOIN workflows w USING (workflow_id) WHERE w.name = 'time_tick'"
    )
    assert total == len(rows)


async def test_retries_and_sleeps_continue_on_workers(
    api: Callable[..., object], spawn: Callable[..., Worker], dq_env: dict[str, str], queues: object
) -> None:
    """In distributed mode a timer is fired by whichever program's loop gets it first (API or worker), and the
    continuation goes through the outbox to a worker, which runs the remaining steps."""
    env = {**dq_env, "WORKFLOW_MODULES": "testflows,dq_worker_flows,timeflows"}
    worker = spawn(queues.tasks, queues.workflows, **env)  # type: ignore[attr-defined]
    import timeflows  # noqa: F401  (the API must know the workflows to start them)

    from orchestrator import services

    creator: Orchestrator = await api(run_processes=False, WORKFLOW_MODULES=["testflows", "timeflows"])  # type: ignore[operator]
    await worker.wait_ready(creator)
    sleeper = await services.start_process("time_sleep", [{}], orchestrator=creator)
    flaky = await services.start_process("time_retry_policy", [{}], orchestrator=creator)

    async def finished(pid: object) -> bool:
        return (await services.get_process(pid, orchestrator=creator))["last_status"] == "completed"  # type: ignore[arg-type]

    await wait_until(lambda: finished(sleeper), timeout=30, what="the sleeper to complete on a worker")
    await wait_until(lambda: finished(flaky), timeout=30, what="the flaky step to succeed on its third attempt")
    rows = await creator.store.pool.fetch(
        "SELECT name, status FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq", flaky
    )
    assert [(r["name"], r["status"]) for r in rows].count(("Flaky", "waiting")) == 1  # two failures, one row
