"""Wake-ups for programs waiting on processes: one LISTEN on `EVENTS_CHANNEL` per program, shared by all waiters.

A notification is a hint, never the record: a waiter is woken on each event about its process and re-reads the
row. Events sent while the connection was down are lost, so every waiter is also woken once the LISTEN is in
place, the first time and after each reconnect (`Listener.on_listening`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from orchestrator.dsl import jsonutil
from orchestrator.persistence.events import EVENTS_CHANNEL
from orchestrator.persistence.listener import Listener

APPLICATION_NAME = "orchestrator-watch"


class ProcessWatch:
    def __init__(self, dsn: str, *, check_interval: float = 5.0) -> None:
        """Nothing connects until the first `changes()`: a program that never waits holds no extra connection."""
        self._listener = Listener(dsn, application_name=APPLICATION_NAME, check_interval=check_interval)
        self._waiters: dict[UUID, set[asyncio.Event]] = {}
        self._started = False

    @asynccontextmanager
    async def changes(self, pid: UUID) -> AsyncIterator[asyncio.Event]:
        """An event that is set whenever `pid` may have changed; read the process each time it is set (and clear
        it). It is set at once, and again once the LISTEN is in place, so the reads together miss no change."""
        changed = asyncio.Event()
        changed.set()
        self._waiters.setdefault(pid, set()).add(changed)
        if not self._started:
            self._started = True
            await self._listener.subscribe(EVENTS_CHANNEL, self._on_notify, on_listening=self._wake_all)
        try:
            yield changed
        finally:
            waiters = self._waiters.get(pid, set())
            waiters.discard(changed)
            if not waiters:
                self._waiters.pop(pid, None)

    def _on_notify(self, payload: str) -> None:
        try:
            pid = UUID(jsonutil.loads(payload)["pid"])
        except (ValueError, KeyError, TypeError):  # engine events carry no pid; malformed ones are ignored
            return
        for changed in self._waiters.get(pid, ()):
            changed.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for changed in waiters:
                changed.set()

    async def close(self) -> None:
        await self._listener.stop()
