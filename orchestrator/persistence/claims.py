"""Claims and leases: a runner takes a process by compare-and-set and keeps it by renewing its lease.

Claims are group-committed (`groupcommit.py`): the claims concurrent deliveries make while one is in flight go
together in the next statement. A claim bumps the process's fencing token, so the writes of a runner that lost
the process (its lease expired and another runner took over) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from orchestrator.persistence.events import EventPublisher
from orchestrator.persistence.groupcommit import GroupCommit
from orchestrator.persistence.processes import STEPS_AGG
from orchestrator.persistence.records import Claim, step_rows

CLAIM_LOAD = f"""
SELECT c.*, w.name AS workflow_name, w.target,
       {STEPS_AGG.format(alias="c", only="{only}")} AS steps,
       (SELECT i.input_state FROM input_states i
         WHERE i.pid = c.pid AND i.input_type = 'initial_state' ORDER BY i.input_time DESC LIMIT 1) AS initial_state,
       (SELECT i.input_state FROM input_states i
         WHERE i.pid = c.pid AND i.input_type = 'user_input'
           AND i.input_time > coalesce((SELECT max(s.completed_at) FROM process_steps s WHERE s.pid = c.pid),
                                       '-infinity'::timestamptz)
         ORDER BY i.input_time DESC LIMIT 1) AS pending_input
  FROM c JOIN workflows w ON w.workflow_id = c.workflow_id
"""
"""What a claim loads of the processes `c` (pid, workflow_id, fencing_token, is_task, created_by, run_by), as read by
`claim_of`; `{only}` restricts the step rows loaded (a condition on `s`, or "")."""

_CLAIM = """
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::varchar[], $4::float8[], $5::varchar[])
        AS t(pid, claimable, owner, lease_ttl, run_by)
), c AS (
    UPDATE processes p
       SET last_status = 'running', lease_owner = i.owner,
           lease_expires_at = now() + make_interval(secs => i.lease_ttl),
           fencing_token = p.fencing_token + 1, last_modified_at = now(),
           run_by = coalesce(i.run_by, p.run_by, p.created_by, 'SYSTEM')
      FROM i
     WHERE p.pid = i.pid AND p.last_status = ANY(string_to_array(i.claimable, ','))
       AND (p.last_status <> 'running' OR p.lease_expires_at < now())
       AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 RETURNING p.pid, p.workflow_id, p.fencing_token, p.is_task, p.created_by, p.run_by, p.open_branches < 0 AS closing
)""" + CLAIM_LOAD.format(only="")

# Renewal never waits for a row lock: a row locked right now is being written by a batch of step writes or
# claims that locks its rows in its own order, and waiting on it from a multi-row statement can close a deadlock
# cycle. A row skipped now is renewed by the next renewal, a third of the lease later.
_RENEW = """
UPDATE processes p SET lease_expires_at = now() + make_interval(secs => $3)
  FROM (SELECT pid FROM processes
         WHERE pid = ANY($2::uuid[]) AND lease_owner = $1 AND last_status = 'running'
         FOR UPDATE SKIP LOCKED) x
 WHERE p.pid = x.pid
"""


class _ClaimRequest(NamedTuple):
    pid: UUID
    claimable: str
    owner: str
    lease_ttl: float
    run_by: str | None


class Claims:
    def __init__(self, pool: asyncpg.Pool, events: EventPublisher) -> None:
        self.pool = pool
        self.events = events
        self._group = GroupCommit(self._claim_many)

    async def claim(
        self, pid: UUID, *, statuses: Sequence[str], owner: str, lease_ttl: float, user: str | None
    ) -> Claim | None:
        """Compare-and-set the process to `running` for `owner` (group-committed with concurrent claims)."""
        claim = await self._group.submit(_ClaimRequest(pid, ",".join(statuses), owner, lease_ttl, user))
        if claim is not None:
            self.events.publish({"pid": str(pid), "status": "running"})
        return claim

    async def _claim_many(self, requests: list[_ClaimRequest]) -> list[Claim | None]:
        # Two claims of one process in one batch: only the first is tried (at most one could win anyway).
        first = list({r.pid: r for r in reversed(requests)}.values())
        columns = [[getattr(r, name) for r in first] for name in _ClaimRequest._fields]
        rows = {row["pid"]: row for row in await self.pool.fetch(_CLAIM, *columns)}
        tried = {id(r) for r in first}
        return [claim_of(rows[r.pid]) if id(r) in tried and r.pid in rows else None for r in requests]

    async def renew_leases(self, owner: str, pids: Sequence[UUID], lease_ttl: float) -> None:
        if pids:
            await self.pool.execute(_RENEW, owner, list(pids), lease_ttl)


def claim_of(row: Any, *, branch: str | None = None) -> Claim:
    """The claim a `CLAIM_LOAD` row describes (`branch`: the branch it holds, its token the branch's)."""
    return Claim(
        pid=row["pid"],
        token=row["fencing_token"],
        workflow_name=row["workflow_name"],
        target=row["target"],
        is_task=row["is_task"],
        created_by=row["created_by"],
        run_by=row["run_by"],
        rows=step_rows(row["steps"]),
        initial_state=row["initial_state"],
        pending_input=row["pending_input"],
        branch=branch,
        closing=bool(row.get("closing")),
    )
