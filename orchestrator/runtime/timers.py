"""The timer loop: one per program, it sleeps until the next due time and fires what is due.

Due times live in PostgreSQL (`persistence/timers.py`: waiting processes; `persistence/schedules.py`: schedule
runs), each indexed, so the loop asks one question per wake-up (the earliest due time) whatever the number of
sleeping processes: nothing is polled per process. A new timer nearer than the one the loop sleeps towards wakes
it early (NOTIFY on `TIMERS_CHANNEL`); as a notification can be lost while the LISTEN connection is down, the
loop never sleeps longer than `max_idle` and re-reads after every reconnect. Firing is a compare-and-set in the
database, so any number of programs (API replicas, workers) run this loop and each timer fires once.

After a firing the loop waits at least `coalesce` seconds before the next: what comes due meanwhile is fired
together, in one transaction, one outbox drain and one publish. Without it, due times 6 ms apart (10,000 sleepers
over a minute) woke every program's loop 167 times a second, each for a transaction that fired one timer, or
none when another program's loop was first (measured: three loops, the API's and two workers', racing). A timer
due while the loop is idle still fires at once; the gap adds at most `coalesce` to the lateness of the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

import orjson
import structlog

from orchestrator.persistence.store import Store
from orchestrator.persistence.timers import TIMERS_CHANNEL
from orchestrator.runtime.executor import Executor

logger = structlog.get_logger(__name__)

FireSchedules = Callable[[], Awaitable[int]]

JUST_DUE = 0.05
"""Seconds overdue under which unfired work is taken to have come due between the firing and the look at the next
due time (or the loop woke a hair early), so it is fired again at once rather than after `busy_pause`."""

COALESCE = 0.1
"""Seconds the loop waits after a firing before the next one: the timers that come due meanwhile fire together."""


class TimerLoop:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        *,
        fire_schedules: FireSchedules,
        max_idle: float = 60.0,
        busy_pause: float = 1.0,
        batch: int = 1000,
        coalesce: float = COALESCE,
    ) -> None:
        """`busy_pause`: how long to wait when something is due but nothing could be fired (the engine is paused,
        or another program holds the rows); `coalesce`: the least wait after a firing (see the module docstring)."""
        self.store = store
        self.executor = executor
        self.fire_schedules = fire_schedules
        self.max_idle = max_idle
        self.busy_pause = busy_pause
        self.batch = batch
        self.coalesce = coalesce
        self._wake = asyncio.Event()
        self._stopping = False
        self._target = float("inf")
        """The epoch second the loop sleeps towards: a notification of an earlier due time wakes it."""

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """End `run_forever` after the firing in progress: cancelled mid-transaction, it would hand its connection
        back to the pool with the transaction still open."""
        self._stopping = True
        self._wake.set()

    def _notified(self, payload: str) -> None:
        with suppress(ValueError, TypeError, KeyError):
            if float(orjson.loads(payload)["due"]) < self._target:
                self._wake.set()

    async def fire_due_timers(self) -> int:
        """Fire every due process timer: `waiting` → `resumed`, dispatched in the same transaction."""
        fired = 0
        while True:
            async with self.store.transaction() as tx:
                refs = await self.store.fire_due_timers(tx, self.batch)
                for ref in refs:
                    await self.executor.resume(tx, ref)
            fired += len(refs)
            if len(refs) < self.batch:
                return fired

    async def tick(self) -> float:
        """Fire what is due; return how long to sleep."""
        fired = await self.fire_due_timers() + await self.fire_schedules()
        delay = await self.store.seconds_to_next_due()
        if delay is None:
            return self.max_idle
        if fired:  # what comes due within `coalesce` waits for it, to be fired with the rest
            return min(max(delay, self.coalesce), self.max_idle)
        if delay <= 0:
            return 0.0 if delay > -JUST_DUE else self.busy_pause
        return min(delay, self.max_idle)

    async def run_forever(self) -> None:
        listener = self.store.listener
        subscription = await listener.subscribe(TIMERS_CHANNEL, self._notified, on_listening=self.wake)
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    delay = await self.tick()
                except Exception as exc:  # keep firing through database hiccups
                    logger.warning("timer loop: firing failed", error=str(exc))
                    delay = self.busy_pause
                self._target = time.time() + delay
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                self._target = float("inf")
        finally:
            await listener.unsubscribe(subscription)
