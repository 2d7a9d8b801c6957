"""Fixtures for distributed mode: per-test queues (deleted afterwards), the API, worker subprocesses (the TCP proxy
in front of RabbitMQ is `support.tcpproxy`'s `proxy` fixture)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dq_flows import REGISTRY as DQ_FLOWS
from dq_support import FAST, Queues, Worker
from support.amqp import delete_queues, dramatiq_queues
from support.processes import dramatiq_command
from support.urls import BROKER_URL, unique

from orchestrator.dsl.workflow import WORKFLOWS, WorkflowRegistry, import_workflow_modules
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings, load_settings


@pytest.fixture
async def queues() -> AsyncIterator[Queues]:
    q = Queues(tasks=unique("t"), workflows=unique("w"))
    yield q
    await delete_queues(BROKER_URL, dramatiq_queues(*q.all()))


@pytest.fixture
def dq_env(worker_env: dict[str, str], queues: Queues) -> dict[str, str]:
    """Settings shared by the API and the workers of a test (as environment strings)."""
    return {
        **worker_env,
        "WORKFLOW_MODULES": "testflows,dq_worker_flows",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), worker_env["PYTHONPATH"]]),
        "DQ_GATE": "/nonexistent/gate",
        "BROKER_URL": BROKER_URL,
        "TASKS_QUEUE": queues.tasks,
        "WORKFLOWS_QUEUE": queues.workflows,
        "DB_POOL_SIZE": "6",
        "MAX_WORKERS": "8",
        **FAST,
    }


_SETTING_NAMES = set(AppSettings.model_fields)


@pytest.fixture
async def api(dq_env: dict[str, str]) -> AsyncIterator[Callable[..., Awaitable[Orchestrator]]]:
    """`await api(**setting_overrides)`: an open in-process API (EXECUTOR=dramatiq) on the test database."""
    opened: list[Orchestrator] = []

    async def make(*, run_processes: bool = True, **overrides: Any) -> Orchestrator:
        values: dict[str, Any] = {k: v for k, v in dq_env.items() if k in _SETTING_NAMES}
        values.update(EXECUTOR="dramatiq", WORKFLOW_MODULES=["testflows"], MIGRATE_ON_START=False)
        values.update(overrides)
        import_workflow_modules(values["WORKFLOW_MODULES"])
        registry = WorkflowRegistry({**WORKFLOWS, **DQ_FLOWS})  # the test workflows, for this API only
        orch = await Orchestrator(load_settings(**values), registry=registry, run_processes=run_processes).open()
        opened.append(orch)
        return orch

    yield make
    for orch in reversed(opened):
        await orch.close()


@pytest.fixture
def spawn(dq_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """`spawn(*queues, processes=1, threads=4, **env)` starts `dramatiq orchestrator.actors -p N -t T -Q ...`."""
    started: list[Worker] = []

    def start(*queue_names: str, processes: int = 1, threads: int = 4, **env: str) -> Worker:
        args = dramatiq_command(*queue_names, processes=processes, threads=threads)
        worker = Worker(args, {**dq_env, **env}, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)  # the master and any worker process left
        worker.proc.wait(10)


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A gate file for `dq_gated` processes: pass `DQ_GATE=str(gate)` to workers, `gate.touch()` to open it."""
    return tmp_path / "gate"


@pytest.fixture
def opened(tmp_path: Path) -> Path:
    """An open gate: `dq_gated` steps of workers with `DQ_GATE=str(opened)` pass at once."""
    path = tmp_path / "opened"
    path.touch()
    return path
