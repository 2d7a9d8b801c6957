"""Polling helpers for tests: wait on real database state with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator import services
from orchestrator.dsl.types import RUN_ENDED_STATUSES
from orchestrator.runtime.orchestrator import Orchestrator

RUN_OUTCOMES = [
    ("tf_simple", None, "completed"),
    ("tf_input", [{"size": 3}], "suspended"),
    ("tf_retry", None, "waiting"),
    ("tf_callback", None, "awaiting_callback"),
    ("tf_fail", None, "failed"),
    ("tf_task_api", None, "api_unavailable"),
    ("tf_task_assert", None, "inconsistent_data"),
    ("tf_abort", None, "aborted"),
]
"""(test workflow, initial input, the status its first run ends in), for every status that ends a run."""


async def wait_status(
    orch: Orchestrator, pid: UUID, statuses: set[str] | frozenset[str] = RUN_ENDED_STATUSES, timeout: float = 10.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            process = await services.get_process(pid, orchestrator=orch)
            if process["last_status"] in statuses:
                return process
            await asyncio.sleep(0.01)


async def step_rows(dsn_or_pool: Any, pid: UUID) -> list[tuple[str, str]]:
    query = "SELECT name, status FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq"
    if isinstance(dsn_or_pool, str):
        conn = await asyncpg.connect(dsn_or_pool)
        try:
            rows = await conn.fetch(query, pid)
        finally:
            await conn.close()
    else:
        rows = await dsn_or_pool.fetch(query, pid)
    return [(r["name"], r["status"]) for r in rows]
