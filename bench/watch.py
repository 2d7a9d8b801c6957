"""Completion observed where a user would see it: `processes.last_status` in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from bench.console import BenchError, Progress
from bench.database import MARK, Monitor
from orchestrator.dsl.types import RUN_ENDED_STATUSES, ProcessStatus

_POLL = f"""{MARK} SELECT pid, last_status, started_at, last_modified_at FROM processes
 WHERE pid = ANY($1::uuid[]) AND last_status = ANY($2::text[])"""

ENDED = frozenset(s.value for s in RUN_ENDED_STATUSES)
SUSPENDED_OR_ENDED = ENDED | {ProcessStatus.SUSPENDED.value}


@dataclass
class Seen:
    status: str
    observed: float
    started_at: datetime
    last_modified_at: datetime


class Watcher:
    """Polls `processes.last_status` of the pids handed to it until each reaches one of `until`.

    With `listen`, a NOTIFY on the events channel wakes the poll at once (one process at a time: the poll
    interval would otherwise dominate the latency seen); the status is still read from the row.
    """

    def __init__(self, monitor: Monitor, until: frozenset[str], progress: Progress, interval: float = 0.02) -> None:
        self.monitor, self.until, self.progress, self.interval = monitor, until, progress, interval
        self.pending: dict[uuid.UUID, float] = {}
        self.seen: dict[uuid.UUID, Seen] = {}
        self.sent: dict[uuid.UUID, float] = {}
        self._futures: dict[uuid.UUID, asyncio.Future[Seen]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, listen: bool = False) -> None:
        if listen:
            from orchestrator.persistence.events import EVENTS_CHANNEL

            await self.monitor.listen(EVENTS_CHANNEL, self._wake.set)
        self._task = asyncio.create_task(self._poll_forever(), name="bench-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.progress.close()

    def add(self, pid: uuid.UUID, sent_at: float) -> asyncio.Future[Seen]:
        first = not self.pending
        self.pending[pid] = self.sent[pid] = sent_at
        future: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()
        self._futures[pid] = future
        if first:
            # Only the first pid wakes the poll: waking it for every start made it poll after each request, and
            # its statement (all pending pids) took PostgreSQL CPU from the servers under measurement.
            self._wake.set()
        return future

    async def _poll_forever(self) -> None:
        while True:
            if self.pending:
                rows = await self.monitor.fetch(_POLL, list(self.pending), list(self.until))
                now = time.perf_counter()
                for r in rows:
                    seen = Seen(r["last_status"], now, r["started_at"], r["last_modified_at"])
                    self.seen[r["pid"]] = seen
                    self.pending.pop(r["pid"], None)
                    future = self._futures.pop(r["pid"])
                    if not future.done():
                        future.set_result(seen)
                self.progress.update(len(self.seen))
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancel that arrives as the wake-up
            # does, and stop() then waited forever on a poll that never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()

    async def all_seen(self, deadline: float) -> None:
        while self.pending:
            if self._task is not None and self._task.done():
                self._task.result()  # the poll failed: raise its error
            if time.monotonic() > deadline:
                rows = await self.monitor.fetch(
                    f"{MARK} SELECT last_status, count(*) AS n FROM processes WHERE pid = ANY($1::uuid[]) "
                    "GROUP BY last_status",
                    list(self.pending),
                )
                counts = ", ".join(f"{r['last_status']}: {r['n']}" for r in rows)
                raise BenchError(f"timed out with {len(self.pending)} processes not done ({counts})")
            await asyncio.sleep(0.005)
        self.progress.update(len(self.seen), force=True)
