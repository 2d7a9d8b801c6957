"""Statements of recovery without an operator (run by the sweeper): take over processes whose runner died, find
lost dispatches, fail callbacks that did not come in time.

Any number of sweepers may run them at once: each skips the rows another one holds (`FOR UPDATE SKIP LOCKED`).
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from orchestrator.persistence.records import ProcessRef
from orchestrator.persistence.statements import Statements
from orchestrator.persistence.transaction import Transaction

_TAKE_OVER_EXPIRED = """
WITH x AS (
    SELECT pid FROM processes
     WHERE last_status = 'running' AND lease_expires_at < now() AND ($2::uuid[] IS NULL OR workflow_id = ANY($2))
     ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
), p AS (
    UPDATE processes p
       SET last_status = 'resumed', lease_owner = NULL, lease_expires_at = NULL,
           fencing_token = p.fencing_token + 1, last_modified_at = now()
      FROM x WHERE p.pid = x.pid
 RETURNING p.pid, p.is_task, p.workflow_id, coalesce(p.run_by, p.created_by, 'SYSTEM') AS run_by
)
SELECT p.pid, p.is_task, p.run_by, w.target, 'resumed' AS last_status
  FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""

_FAIL_TIMED_OUT_CALLBACKS = """
WITH x AS (
    SELECT p.pid, s.stepid
      FROM processes p
      JOIN LATERAL (SELECT st.stepid, st.state, st.completed_at FROM process_steps st WHERE st.pid = p.pid
                     ORDER BY st.completed_at DESC, st.seq DESC LIMIT 1) s ON true
     WHERE p.last_status = 'awaiting_callback' AND s.state ? '__callback_timeout'
       AND s.completed_at + make_interval(secs => (s.state->>'__callback_timeout')::float8) < now()
       FOR UPDATE OF p SKIP LOCKED
), st AS (
    UPDATE process_steps SET status = 'failed', state = state || '{"error": "Callback timed out"}'::jsonb,
           completed_at = clock_timestamp()
      FROM x WHERE process_steps.stepid = x.stepid
)
UPDATE processes p
   SET last_status = 'failed', failed_reason = 'Callback timed out', last_step = 'Callback timed out',
       last_modified_at = now()
  FROM x WHERE p.pid = x.pid
RETURNING p.pid
"""

_UNDISPATCHED = """
WITH x AS (
    SELECT pid FROM processes
     WHERE last_status IN ('created', 'resumed') AND last_modified_at <= now() - make_interval(secs => $1)
       AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
       AND ($3::uuid[] IS NULL OR workflow_id = ANY($3))
     ORDER BY last_modified_at LIMIT $2 FOR UPDATE SKIP LOCKED
), p AS (
    UPDATE processes p SET last_modified_at = now() FROM x WHERE p.pid = x.pid
 RETURNING p.pid, p.is_task, p.workflow_id, p.last_status, coalesce(p.run_by, p.created_by, 'SYSTEM') AS run_by
)
SELECT p.pid, p.is_task, p.run_by, p.last_status, w.target FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""

_FOLD_ENDED_SESSIONS = """
WITH ended AS (
    DELETE FROM process_status_counts
     WHERE backend <> 0 AND backend NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
 RETURNING last_status, is_task, n
)
INSERT INTO process_status_counts AS c (backend, last_status, is_task, n)
SELECT 0, last_status, is_task, sum(n) FROM ended GROUP BY 2, 3
    ON CONFLICT (backend, last_status, is_task) DO UPDATE SET n = c.n + excluded.n
"""
"""The counter rows of database sessions that have ended, folded into one row per status (backend 0). A session
whose pid is reused meanwhile loses nothing: the DELETE returns the rows as last written."""


class RecoveryStatements(Statements):
    async def take_over_expired(
        self, tx: Transaction, limit: int = 500, *, workflow_ids: Sequence[UUID] | None = None
    ) -> list[ProcessRef]:
        """Processes whose runner stopped renewing its lease: fence it out and mark them `resumed`. With
        `workflow_ids`, only processes of those workflows."""
        rows = await tx.conn.fetch(_TAKE_OVER_EXPIRED, limit, workflow_ids)
        for r in rows:
            self._announce(tx, r["pid"], "resumed")
        return [ProcessRef(r["pid"], r["is_task"], r["target"], r["run_by"]) for r in rows]

    async def undispatched(
        self, tx: Transaction, older_than: float, limit: int = 1000, *, workflow_ids: Sequence[UUID] | None = None
    ) -> list[tuple[ProcessRef, str]]:
        """Processes left `created`/`resumed` for `older_than` seconds (a lost dispatch), with their status. With
        `workflow_ids`, only processes of those workflows."""
        rows = await tx.conn.fetch(_UNDISPATCHED, older_than, limit, workflow_ids)
        return [(ProcessRef(r["pid"], r["is_task"], r["target"], r["run_by"]), r["last_status"]) for r in rows]

    async def fold_status_counts(self) -> None:
        """Keep the status counters (migration 0006) a few rows per live session however long the database runs."""
        await self.pool.execute(_FOLD_ENDED_SESSIONS)

    async def fail_timed_out_callbacks(self) -> list[UUID]:
        """Processes awaiting a callback past their `callback_step(timeout=...)`: their awaiting row is overwritten
        as failed ("Callback timed out"), as orchestrator-core's task does; a retry runs the callback step again."""
        rows = await self.pool.fetch(_FAIL_TIMED_OUT_CALLBACKS)
        for r in rows:
            self.events.publish({"pid": str(r["pid"]), "status": "failed"})
        return [r["pid"] for r in rows]
