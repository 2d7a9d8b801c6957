"""Inserting processes, group-committed: the starts that concurrent requests make while an insert is in flight are
written together, in one statement and one transaction (`groupcommit.py`), as step outcomes and claims are.

A process is inserted with its initial input and, as the start requires, already claimed under a lease or with
its outbox dispatch. The engine lock is checked by the statement itself, so no start slips past a pause.
"""

from __future__ import annotations

from typing import NamedTuple
from uuid import UUID

import asyncpg

from orchestrator.dsl.types import State
from orchestrator.persistence.groupcommit import GroupCommit, columns
from orchestrator.persistence.records import Dispatch, Lease, NewProcess

CREATE_MANY = """
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::bool[], $5::jsonb[], $6::varchar[],
                         $7::float8[], $8::varchar[], $9::varchar[])
        AS t(pid, workflow_id, created_by, is_task, initial_state, owner, lease_ttl, queue, actor)
), p AS (
    INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, run_by,
                           lease_owner, lease_expires_at, fencing_token)
    SELECT pid, workflow_id, CASE WHEN owner IS NULL THEN 'created' ELSE 'running' END, created_by, is_task,
           created_by, owner, now() + make_interval(secs => lease_ttl), CASE WHEN owner IS NULL THEN 0 ELSE 1 END
      FROM i
     WHERE NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 RETURNING pid, fencing_token
), s AS (
    INSERT INTO input_states (pid, input_state, input_type)
    SELECT i.pid, i.initial_state, 'initial_state' FROM i JOIN p ON p.pid = i.pid
), o AS (
    INSERT INTO outbox (queue, actor, pid, run_by)
    SELECT i.queue, i.actor, i.pid, i.created_by FROM i JOIN p ON p.pid = i.pid WHERE i.queue IS NOT NULL
)
SELECT pid, fencing_token FROM p
"""
"""Insert processes (one per element of the arrays); returns the (pid, fencing_token) of those inserted: none
while the engine is paused."""


class NewRow(NamedTuple):
    """A process to insert, as the columns of `CREATE_MANY`."""

    pid: UUID
    workflow_id: UUID
    created_by: str
    is_task: bool
    initial_state: State
    owner: str | None
    lease_ttl: float | None
    queue: str | None
    actor: str | None

    @classmethod
    def of(cls, process: NewProcess, slot: Lease | Dispatch | None) -> NewRow:
        lease = slot if isinstance(slot, Lease) else None
        dispatch = slot if isinstance(slot, Dispatch) else None
        return cls(
            process.pid,
            process.workflow_id,
            process.user,
            process.is_task,
            process.initial_state,
            lease.owner if lease else None,
            lease.ttl if lease else None,
            dispatch.queue if dispatch else None,
            dispatch.actor if dispatch else None,
        )


class ProcessCreator:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._group = GroupCommit(self._create_many)

    async def create(self, row: NewRow) -> int | None:
        """Insert the process (group-committed); its fencing token, or None if the engine is paused."""
        return await self._group.submit(row)

    async def _create_many(self, rows: list[NewRow]) -> list[int | None]:
        tokens = {r["pid"]: r["fencing_token"] for r in await self.pool.fetch(CREATE_MANY, *columns(rows))}
        return [tokens.get(row.pid) for row in rows]
