"""`wait_for_process` in distributed mode: the processes run in a `dramatiq orchestrator.actors` worker
subprocess; the API program learns each outcome from the event stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from dq_support import Queues, Worker
from testflows import RUN_OUTCOMES

from orchestrator import services, wait_for_process
from orchestrator.runtime.orchestrator import Orchestrator

pytestmark = pytest.mark.slow


async def test_each_outcome_of_a_process_run_by_a_worker(
    api: Callable[..., Awaitable[Orchestrator]], spawn: Callable[..., Worker], queues: Queues
) -> None:
    orch = await api()
    pids = [await services.start_process(wf, inputs, orchestrator=orch) for wf, inputs, _ in RUN_OUTCOMES]
    waiting = [asyncio.create_task(wait_for_process(pid, orchestrator=orch, timeout=60)) for pid in pids]
    spawn(queues.tasks, queues.workflows)
    processes = await asyncio.gather(*waiting)
    assert [p["last_status"] for p in processes] == [ended for _, _, ended in RUN_OUTCOMES]
    assert all(p["steps"][0]["status"] == "success" for p in processes)  # run by the worker, read back here

    suspended = processes[1]["process_id"]
    waiter = asyncio.create_task(wait_for_process(suspended, until="completed", orchestrator=orch, timeout=60))
    await services.resume_process(suspended, [{"name": "ada"}], orchestrator=orch)
    assert (await waiter)["current_state"]["greeting"] == "hello ada x1 size 3"
