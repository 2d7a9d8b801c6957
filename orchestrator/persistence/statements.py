"""The base of the store's statement groups (`processes.py`, `recovery.py`, ...): what each of them works with."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from orchestrator.persistence.events import EventPublisher
from orchestrator.persistence.transaction import Transaction


class Statements:
    """Statements that run on `pool` (or in a caller's transaction) and announce their changes with `events`."""

    pool: asyncpg.Pool
    events: EventPublisher

    def _announce(self, tx: Transaction, pid: UUID, status: str) -> None:
        """Publish the process's new status once `tx` has committed."""
        tx.on_commit(lambda: self.events.publish({"pid": str(pid), "status": status}))
