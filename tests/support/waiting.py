"""Waiting for a condition with a deadline, never a fixed sleep: poll real state until it holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import pytest

from orchestrator import services
from orchestrator.dsl.types import RUN_ENDED_STATUSES
from orchestrator.runtime.orchestrator import Orchestrator

T = TypeVar("T")


async def wait_for(predicate: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; the last value otherwise (the caller's assertion then
    fails with its own message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


async def wait_until(
    predicate: Callable[[], Awaitable[object]], timeout: float = 10.0, what: str = "condition", interval: float = 0.05
) -> None:
    """Poll `predicate` until truthy; fail the test, naming `what`, after `timeout` seconds."""
    if not await wait_for(predicate, timeout, interval):
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def wait_status(
    orch: Orchestrator, pid: UUID, statuses: set[str] | frozenset[str] = RUN_ENDED_STATUSES, timeout: float = 10.0
) -> dict[str, Any]:
    """The process (as `services.get_process` returns it) once its status is one of `statuses`."""
    process: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal process
        process = await services.get_process(pid, orchestrator=orch)
        return process["last_status"] in statuses

    await wait_until(reached, timeout, f"process {pid} to reach one of {sorted(statuses)}", interval=0.01)
    return process
