"""Awaiting a process's outcome from a program, as DBOS's `handle.get_result()` or Temporal's `handle.result()`.

Driven by the event stream (LISTEN/NOTIFY), not by polling, so it sees a process run by this program or by a
worker anywhere else on the same database, in either executor mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from orchestrator.dsl.types import RUN_ENDED_STATUSES, ProcessStatus
from orchestrator.exceptions import ProcessNotFoundError, ProcessWaitTimeoutError
from orchestrator.runtime.orchestrator import Orchestrator, current
from orchestrator.services.reads import get_process, process_summary


async def wait_for_process(
    process_id: UUID,
    *,
    until: str | Iterable[str] | None = None,
    timeout: float | None = None,
    orchestrator: Orchestrator | None = None,
) -> dict[str, Any]:
    """Wait until the process is in one of the `until` statuses and return it as `get_process` does.

    By default `until` is every status that ends a run (completed, suspended, waiting, awaiting_callback, failed,
    api_unavailable, inconsistent_data, aborted); a process already there returns at once. After `timeout` seconds
    ProcessWaitTimeoutError is raised and the process is left alone. ProcessNotFoundError if it does not exist (or is
    deleted meanwhile); ValueError for a status that does not exist.
    """
    orch = orchestrator or current()
    asked = [until] if isinstance(until, str) else until
    wanted = RUN_ENDED_STATUSES if asked is None else frozenset(ProcessStatus(s) for s in asked)  # no typo waits
    status: str | None = None
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline, orch.process_watch.changes(process_id) as changed:
            while status not in wanted:
                await changed.wait()
                changed.clear()
                summary = await process_summary(process_id, orchestrator=orch)
                if summary is None:
                    raise ProcessNotFoundError(process_id)
                status = summary["last_status"]
    except TimeoutError:
        if deadline.expired():
            raise ProcessWaitTimeoutError(process_id, status, timeout or 0) from None
        raise
    return await get_process(process_id, orchestrator=orch)
