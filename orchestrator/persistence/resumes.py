"""Resuming processes, group-committed: the resumes that concurrent requests make while one is in flight are written
together, in one statement and one transaction (`groupcommit.py`), as starts and step outcomes are.

Each resume is a compare-and-set of its own (the status and fencing token its caller read), stores its user input
and, with a lease, claims the process for the lease's owner. The engine lock is checked by the statement itself,
so no resume slips past a pause.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from orchestrator.dsl.types import State
from orchestrator.persistence.groupcommit import GroupCommit, columns

RESUME_MANY = """
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::jsonb[], $5::varchar[], $6::float8[],
                         $7::bigint[]) WITH ORDINALITY
        AS t(pid, seen_status, run_by, user_input, owner, lease_ttl, seen_token, ord)
), p AS (
    UPDATE processes pr
       SET last_status = CASE WHEN i.owner IS NULL THEN 'resumed' ELSE 'running' END,
           run_by = i.run_by, last_modified_at = now(),
           lease_owner = coalesce(i.owner, pr.lease_owner),
           lease_expires_at = CASE WHEN i.owner IS NULL THEN pr.lease_expires_at
                                   ELSE now() + make_interval(secs => i.lease_ttl) END,
           fencing_token = pr.fencing_token + CASE WHEN i.owner IS NULL THEN 0 ELSE 1 END
      FROM i
     WHERE pr.pid = i.pid AND pr.last_status = i.seen_status
       AND (i.seen_token IS NULL OR pr.fencing_token = i.seen_token)
       AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 RETURNING pr.pid, pr.is_task, pr.workflow_id, pr.fencing_token, pr.created_by, i.owner, i.user_input, i.ord
), s AS (
    INSERT INTO input_states (pid, input_state, input_type) SELECT pid, user_input, 'user_input' FROM p
)
SELECT p.ord, p.is_task, p.fencing_token, p.created_by, w.name AS workflow_name, w.target,
       CASE WHEN p.owner IS NULL THEN NULL ELSE
           (SELECT s.input_state FROM input_states s WHERE s.pid = p.pid AND s.input_type = 'initial_state'
             ORDER BY s.input_time DESC LIMIT 1) END AS initial_state
  FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""
"""Resume processes (one per element of the arrays); returns a row per resume that was written, by its ordinal:
none while the engine is paused. Two resumes of one process in one batch: one is written, as one would win a race."""


class ResumeRow(NamedTuple):
    """A resume to write, as the columns of `RESUME_MANY`."""

    pid: UUID
    seen_status: str
    user: str
    user_input: State
    owner: str | None
    lease_ttl: float | None
    seen_token: int | None


class ProcessResumer:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._group = GroupCommit(self._resume_many)

    async def resume(self, row: ResumeRow) -> Any:
        """Write the resume (group-committed); its row of `RESUME_MANY`, or None if it was refused."""
        return await self._group.submit(row)

    async def _resume_many(self, rows: list[ResumeRow]) -> list[Any]:
        found = {r["ord"]: r for r in await self.pool.fetch(RESUME_MANY, *columns(rows))}
        return [found.get(i) for i in range(1, len(rows) + 1)]
