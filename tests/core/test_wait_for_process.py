"""`wait_for_process`: each kind of outcome, a chosen status, a timeout, a process run by another program, and a
lost LISTEN connection (the distributed-mode counterpart is in tests/distributed/test_distributed_wait.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from testflows import RUN_OUTCOMES

from orchestrator import ProcessWaitTimeoutError, services, wait_for_process
from orchestrator.exceptions import ProcessNotFoundError
from orchestrator.persistence.process_watch import APPLICATION_NAME
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings


@pytest.mark.parametrize(("workflow", "inputs", "ended"), RUN_OUTCOMES)
async def test_returns_when_the_run_ends(
    orch: Orchestrator, workflow: str, inputs: list[dict[str, Any]] | None, ended: str
) -> None:
    pid = await services.start_process(workflow, inputs)
    process = await wait_for_process(pid, timeout=10)
    assert process["process_id"] == pid
    assert process["last_status"] == ended
    assert process["steps"]  # the whole process view, as get_process returns it


async def test_a_process_already_ended_returns_at_once(orch: Orchestrator) -> None:
    pid = await services.start_process("tf_simple")
    await wait_for_process(pid, timeout=10)
    started = time.monotonic()
    assert (await wait_for_process(pid, timeout=10))["last_status"] == "completed"
    assert time.monotonic() - started < 1.0


async def test_until_a_chosen_status(orch: Orchestrator) -> None:
    pid = await services.start_process("tf_input", [{"size": 3}])
    await wait_for_process(pid, until="suspended", timeout=10)
    waiter = asyncio.create_task(wait_for_process(pid, until=["completed", "failed"], timeout=10))
    await services.resume_process(pid, [{"name": "ada"}])
    process = await waiter
    assert process["last_status"] == "completed"
    assert process["current_state"]["greeting"] == "hello ada x1 size 3"


async def test_timeout_raises_and_leaves_the_process_alone(orch: Orchestrator) -> None:
    pid = await services.start_process("tf_input", [{"size": 3}])
    with pytest.raises(ProcessWaitTimeoutError) as raised:
        await wait_for_process(pid, until="completed", timeout=0.5)
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.status == "suspended"
    assert str(raised.value) == f"Process {pid} did not reach the awaited status within 0.5s; it is suspended"
    await services.resume_process(pid, [{"name": "ada"}])
    assert (await wait_for_process(pid, timeout=10))["last_status"] == "completed"


async def test_unknown_process_and_unknown_status(orch: Orchestrator) -> None:
    with pytest.raises(ProcessNotFoundError):
        await wait_for_process(uuid.uuid4(), timeout=10)
    pid = await services.start_process("tf_simple")
    with pytest.raises(ValueError, match="'complete' is not a valid ProcessStatus"):
        await wait_for_process(pid, until="complete")


async def test_a_process_run_by_another_program(orch: Orchestrator, settings: AppSettings) -> None:
    """A program that runs no processes (as a CLI tool) learns the outcome of one the other program runs."""
    async with Orchestrator(settings, run_processes=False) as observer:
        pid = await services.start_process("tf_input", [{"size": 3}], orchestrator=orch)
        suspended = await wait_for_process(pid, orchestrator=observer, timeout=10)
        assert suspended["last_status"] == "suspended"
        waiter = asyncio.create_task(wait_for_process(pid, until="completed", orchestrator=observer, timeout=10))
        await services.resume_process(pid, [{"name": "ada"}], orchestrator=orch)
        assert (await waiter)["last_status"] == "completed"


async def test_a_lost_listen_connection_is_re_established_and_the_row_re_read(orch: Orchestrator) -> None:
    pid = await services.start_process("tf_input", [{"size": 3}])
    await wait_for_process(pid, until="suspended", timeout=10)
    waiter = asyncio.create_task(wait_for_process(pid, until="completed", timeout=20))
    killed = await orch.store.pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1"
        " AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert killed == 1
    # The change may commit while nobody listens: the re-read after reconnecting must find it.
    await services.resume_process(pid, [{"name": "ada"}])
    assert (await waiter)["last_status"] == "completed"
