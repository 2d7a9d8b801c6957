"""The statement that settles a fork which cannot join yet: the process leaves `running` for the status of its
first failing or waiting branch, fenced by the run's token like every write of a run."""

from __future__ import annotations

from uuid import UUID

from orchestrator.persistence.statements import Statements

_SETTLE = """
UPDATE processes
   SET last_status = $3, last_step = $4, assignee = $5, failed_reason = left($6, 10000), traceback = right($7, 50000),
       lease_owner = NULL, lease_expires_at = NULL, last_modified_at = now(), open_branches = 0
 WHERE pid = $1 AND fencing_token = $2 AND last_status = 'running'
RETURNING pid
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
    ) -> bool:
        """Leave `running` for `status` (the branch `step` waits or failed); False when the claim was lost."""
        settled = await self.pool.fetchval(_SETTLE, pid, token, status, step, assignee, failed_reason, traceback)
        if settled is not None:
            self.events.publish({"pid": str(pid), "status": status, "step": step})
        return settled is not None
