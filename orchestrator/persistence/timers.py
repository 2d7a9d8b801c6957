"""Timers: the due times of `waiting` processes (a retry attempt, the end of a sleep), fired by compare-and-set.

A timer row is written with the step outcome that makes the process wait (`stepwriter.py`); firing it deletes the
row and moves the process `waiting` → `resumed` in one statement, skipping rows another program is firing (`FOR
UPDATE SKIP LOCKED`), so any number of timer loops fire each timer once. A process no longer `waiting` (resumed
by hand, aborted) just loses its timer. Nothing is fired while the engine is paused.
"""

from __future__ import annotations

from orchestrator.persistence.records import ProcessRef
from orchestrator.persistence.statements import Statements
from orchestrator.persistence.transaction import Transaction

TIMERS_CHANNEL = "orchestrator_timers"
"""NOTIFY channel of new due times (payload: epoch seconds): wakes the timer loops early for a nearer timer."""

_NEXT_DUE = """
SELECT extract(epoch FROM least((SELECT min(due_at) FROM process_timers),
                                (SELECT min(next_run_at) FROM schedules)) - now())
"""

_FIRE_DUE = """
WITH d AS (
    DELETE FROM process_timers t
     WHERE t.pid IN (SELECT pid FROM process_timers WHERE due_at <= now()
                      ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
       AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 RETURNING t.pid
), p AS (
    UPDATE processes p SET last_status = 'resumed', last_modified_at = now()
      FROM d WHERE p.pid = d.pid AND p.last_status = 'waiting'
 RETURNING p.pid, p.is_task, p.workflow_id, coalesce(p.run_by, p.created_by, 'SYSTEM') AS run_by
)
SELECT p.pid, p.is_task, p.run_by, w.target FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""

_RESUME_WAITING = """
WITH x AS (
    SELECT p.pid FROM processes p
     WHERE p.last_status = 'waiting' AND p.last_modified_at <= now() - make_interval(secs => $1)
       AND NOT EXISTS (SELECT 1 FROM process_timers t WHERE t.pid = p.pid)
       AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
     ORDER BY p.last_modified_at LIMIT $2 FOR UPDATE SKIP LOCKED
), p AS (
    UPDATE processes p SET last_status = 'resumed', last_modified_at = now() FROM x WHERE p.pid = x.pid
 RETURNING p.pid, p.is_task, p.workflow_id, coalesce(p.run_by, p.created_by, 'SYSTEM') AS run_by
)
SELECT p.pid, p.is_task, p.run_by, w.target FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""

_TIMER_OF = "SELECT due_at, kind, attempt FROM process_timers WHERE pid = $1"


class TimerStatements(Statements):
    async def seconds_to_next_due(self) -> float | None:
        """Seconds until the earliest process timer or schedule run (negative: overdue); None if there is none."""
        value = await self.pool.fetchval(_NEXT_DUE)
        return float(value) if value is not None else None

    async def fire_due_timers(self, tx: Transaction, limit: int = 1000) -> list[ProcessRef]:
        """Delete up to `limit` due timers and mark their still-waiting processes `resumed`; return those, to be
        dispatched in `tx`."""
        rows = await tx.conn.fetch(_FIRE_DUE, limit)
        for r in rows:
            self._announce(tx, r["pid"], "resumed")
        return [ProcessRef(r["pid"], r["is_task"], r["target"], r["run_by"]) for r in rows]

    async def resume_waiting(self, tx: Transaction, waited: float, limit: int = 1000) -> list[ProcessRef]:
        """`waiting` processes without a timer (a `retrystep` without a retry policy) left alone for `waited`
        seconds: mark them `resumed` (to be dispatched in `tx`), as orchestrator-core's periodic task does."""
        rows = await tx.conn.fetch(_RESUME_WAITING, waited, limit)
        for r in rows:
            self._announce(tx, r["pid"], "resumed")
        return [ProcessRef(r["pid"], r["is_task"], r["target"], r["run_by"]) for r in rows]

    async def timer_of(self, pid: object) -> dict[str, object] | None:
        """A waiting process's timer: `due_at`, `kind` and `attempt`; None if it has none."""
        row = await self.pool.fetchrow(_TIMER_OF, pid)
        return dict(row.items()) if row is not None else None
