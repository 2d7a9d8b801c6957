"""The transactional outbox of distributed mode: a dispatch is an `outbox` row written in the transaction of the
status change that needs it, so the two commit together or not at all; a relay publishes the rows and deletes them.

Once a transaction holding outbox rows has committed, the program that wrote them wakes its own relay; only when
that relay is not publishing is `OUTBOX_CHANNEL` NOTIFYed (`announce_outbox`), to wake the relays of the other
instances: each woken relay runs a drain, which finds nothing when the writer's relay was first. Relays also
poll, so a lost notification only delays.
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

# Deleted as they are locked, in one statement: the rows stay locked until the drain's transaction ends, and come
# back if it rolls back.
_TAKE = """
DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, queue, actor, pid, run_by, branch, branches
"""


class OutboxRow(NamedTuple):
    id: int
    queue: str
    actor: str
    pid: UUID
    run_by: str
    branch: str | None
    """A single-branch message's branch (`persistence/branch_claims.py`); None for a process's dispatch."""
    branches: list[str] | None
    """A batch message's branches (several branches of one fork, claimed together); None otherwise."""

    @property
    def args(self) -> list[object]:
        """The message's arguments: `(process_id, user)`, or `(process_id, branch or [branch, ...])`."""
        if self.branches is not None:
            return [str(self.pid), list(self.branches)]
        return [str(self.pid), self.run_by if self.branch is None else self.branch]


class OutboxStatements(Statements):
    async def enqueue_dispatch(self, tx: Transaction, *, queue: str, actor: str, pid: UUID, run_by: str) -> None:
        """Write a dispatch of `actor` for the process to `queue`, committed with `tx`."""
        await tx.conn.execute(_ENQUEUE, queue, actor, pid, run_by)

    def announce_outbox(self) -> None:
        """Wake the relays of every instance (a NOTIFY, sent with the next batch of events)."""
        self.events.publish({}, channel=OUTBOX_CHANNEL)

    @asynccontextmanager
    async def outbox_batch(self, limit: int) -> AsyncIterator[list[OutboxRow]]:
        """The `limit` oldest rows no other relay holds, in one transaction: deleted when the block returns
        (commit), kept for the next try when it raises (rollback)."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield sorted(OutboxRow(*row) for row in await conn.fetch(_TAKE, limit))
