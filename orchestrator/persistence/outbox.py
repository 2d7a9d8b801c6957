"""The transactional outbox of distributed mode: a dispatch is an `outbox` row written in the transaction of the
status change that needs it, so the two commit together or not at all; a relay publishes the rows and deletes them.

Once a transaction holding outbox rows has committed, `OUTBOX_CHANNEL` is NOTIFYed (once, however many rows it
holds) to wake the relays of the other instances; they also poll, so a lost notification only delays.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple
from uuid import UUID

from orchestrator.persistence.events import OUTBOX_CHANNEL
from orchestrator.persistence.statements import Statements
from orchestrator.persistence.transaction import Transaction

# A dispatch already waiting in the outbox and not being published right now is not written twice (the sweeper
# dispatches again every REDISPATCH_AFTER_SECONDS while RabbitMQ is down). The found row is locked until commit, so
# a relay cannot publish and delete it before this transaction's status change is visible.
_ENQUEUE = """
WITH waiting AS (
    SELECT id FROM outbox WHERE pid = $3 AND actor = $2 AND queue = $1 AND run_by = $4
     LIMIT 1 FOR UPDATE SKIP LOCKED
)
INSERT INTO outbox (queue, actor, pid, run_by) SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM waiting)
"""

_SELECT = "SELECT id, queue, actor, pid, run_by, branch FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


class OutboxRow(NamedTuple):
    id: int
    queue: str
    actor: str
    pid: UUID
    run_by: str
    branch: str | None
    """A branch message's branch (`persistence/branch_claims.py`); None for a process's dispatch."""


class OutboxStatements(Statements):
    async def enqueue_dispatch(self, tx: Transaction, *, queue: str, actor: str, pid: UUID, run_by: str) -> None:
        """Write a dispatch of `actor` for the process to `queue`, committed with `tx`."""
        await tx.conn.execute(_ENQUEUE, queue, actor, pid, run_by)
        tx.on_commit_once(self._notify_relays)

    def _notify_relays(self) -> None:
        self.events.publish({}, channel=OUTBOX_CHANNEL)

    @asynccontextmanager
    async def outbox_batch(self, limit: int) -> AsyncIterator[list[OutboxRow]]:
        """Lock the `limit` oldest rows no other relay holds, in one transaction: deleted when the block returns
        (commit), kept for the next try when it raises (rollback)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = [OutboxRow(*row) for row in await conn.fetch(_SELECT, limit)]
            yield rows
            if rows:
                await conn.execute(_DELETE, [row.id for row in rows])
