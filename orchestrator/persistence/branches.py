"""The statement that settles a fork which cannot join yet: the process leaves `running` for the status of its
first failing or waiting branch, fenced by the run's token like every write of a run; a `waiting` branch (a retry
policy's attempt, a sleep) sets the process's timer in the same statement."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from orchestrator.persistence.statements import Statements
from orchestrator.persistence.timers import TIMERS_CHANNEL

_SETTLE = """
WITH p AS (
    UPDATE processes
       SET last_status = $3, last_step = $4, assignee = $5, failed_reason = left($6, 10000),
           traceback = right($7, 50000), lease_owner = NULL, lease_expires_at = NULL, last_modified_at = now(),
           open_branches = 0
     WHERE pid = $1 AND fencing_token = $2 AND last_status = 'running'
 RETURNING pid
), timer AS (
    INSERT INTO process_timers (pid, due_at, kind, attempt)
    SELECT p.pid, $8::timestamptz, $9::varchar, $10::int FROM p WHERE $8::timestamptz IS NOT NULL
        ON CONFLICT (pid) DO UPDATE SET due_at = excluded.due_at, kind = excluded.kind, attempt = excluded.attempt
)
SELECT pid FROM p
"""


class BranchStatements(Statements):
    async def settle_fork(
        self,
        *,
        pid: UUID,
        token: int,
        status: str,
        step: str,
        assignee: str,
        failed_reason: str | None,
        traceback: str | None,
        wake_at: datetime | None = None,
        timer_kind: str | None = None,
        attempt: int = 0,
    ) -> bool:
        """Leave `running` for `status` (the branch `step` waits or failed), with the timer `wake_at` sets when the
        branch waits for one; False when the claim was lost."""
        settled = await self.pool.fetchval(
            _SETTLE, pid, token, status, step, assignee, failed_reason, traceback, wake_at, timer_kind, attempt
        )
        if settled is not None:
            self.events.publish({"pid": str(pid), "status": status, "step": step})
            if wake_at is not None:
                self.events.publish({"due": wake_at.timestamp()}, channel=TIMERS_CHANNEL)
        return settled is not None
