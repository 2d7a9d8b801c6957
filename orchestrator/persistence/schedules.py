"""The `schedules` table: schedules created over REST or the CLI, and those declared in code (upserted at
start-up); and the claim of a due tick.

A tick is claimed in the transaction that starts its process: the schedule row is locked (`FOR UPDATE SKIP
LOCKED`, so concurrent timer loops take different schedules) and its `next_run_at` moved on, and the process is
inserted before the commit. Either both happen or neither: one process per tick, whatever the number of programs.
Ticks are claimed in batches, one transaction each, as a commit per tick bounds a program to a few dozen a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from orchestrator.dsl import jsonutil
from orchestrator.dsl.types import State
from orchestrator.persistence.statements import Statements
from orchestrator.persistence.timers import TIMERS_CHANNEL
from orchestrator.persistence.transaction import Transaction

_COLUMNS = """
    s.schedule_id, s.name, s.workflow_id, w.name AS workflow_name, w.is_task, s.trigger, s.trigger_kwargs,
    s.user_inputs, s.no_uncompleted_instance, s.source, s.next_run_at, s.last_run_at, s.last_pid, s.created_at
"""

_SELECT = f"SELECT {_COLUMNS} FROM schedules s JOIN workflows w ON w.workflow_id = s.workflow_id"

_INSERT = f"""
WITH s AS (
    INSERT INTO schedules (name, workflow_id, trigger, trigger_kwargs, user_inputs, no_uncompleted_instance,
                           source, next_run_at, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, 'api', $7, $8)
 RETURNING *
)
SELECT {_COLUMNS} FROM s JOIN workflows w ON w.workflow_id = s.workflow_id
"""

_UPDATE = f"""
WITH s AS (
    UPDATE schedules SET name = $2, trigger = $3, trigger_kwargs = $4, next_run_at = $5, created_at = $6
     WHERE schedule_id = $1
 RETURNING *
)
SELECT {_COLUMNS} FROM s JOIN workflows w ON w.workflow_id = s.workflow_id
"""

_UPSERT_CODE = """
INSERT INTO schedules (name, workflow_id, trigger, trigger_kwargs, user_inputs, no_uncompleted_instance, source,
                       next_run_at, created_at)
SELECT n, w, t, k, u::jsonb, o, s, r, c
  FROM unnest($1::varchar[], $2::uuid[], $3::varchar[], $4::jsonb[], $5::text[], $6::bool[],
              $7::varchar[], $8::timestamptz[], $9::timestamptz[]) AS x(n, w, t, k, u, o, s, r, c)
    ON CONFLICT (name) WHERE source = 'code' DO UPDATE
   SET workflow_id = excluded.workflow_id, user_inputs = excluded.user_inputs,
       no_uncompleted_instance = excluded.no_uncompleted_instance,
       trigger = excluded.trigger, trigger_kwargs = excluded.trigger_kwargs,
       -- an unchanged trigger keeps its next run: a restart neither skips nor repeats a tick
       next_run_at = CASE WHEN (schedules.trigger, schedules.trigger_kwargs)
                               = (excluded.trigger, excluded.trigger_kwargs)
                          THEN schedules.next_run_at ELSE excluded.next_run_at END,
       created_at = CASE WHEN (schedules.trigger, schedules.trigger_kwargs)
                              = (excluded.trigger, excluded.trigger_kwargs)
                         THEN schedules.created_at ELSE excluded.created_at END
"""

_DROP_STALE_CODE = """
DELETE FROM schedules WHERE source = 'code' AND workflow_id = ANY($1::uuid[]) AND name <> ALL($2::varchar[])
"""

_CLAIM_DUE = f"""
SELECT {_COLUMNS}, now() AS now,
       (SELECT p.last_status FROM processes p WHERE p.pid = s.last_pid) AS last_status
  FROM schedules s JOIN workflows w ON w.workflow_id = s.workflow_id
 WHERE s.next_run_at <= now() AND w.name = ANY($1::varchar[])
   AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 ORDER BY s.next_run_at LIMIT $2
   FOR UPDATE OF s SKIP LOCKED
"""

_ADVANCE = """
UPDATE schedules s SET next_run_at = x.next_run_at, last_run_at = now(), last_pid = coalesce(x.pid, s.last_pid)
  FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[]) AS x(schedule_id, next_run_at, pid)
 WHERE s.schedule_id = x.schedule_id
"""

_RECORD_RUNS = """
INSERT INTO schedule_runs (pid, schedule_id, schedule_name, tick_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::timestamptz[])
"""

_RUN_OF = "SELECT schedule_id, schedule_name, tick_at FROM schedule_runs WHERE pid = $1"


@dataclass(frozen=True)
class CodeSchedule:
    """A schedule declared in code, with its first run computed for the case it is new."""

    name: str
    workflow_id: UUID
    trigger: str
    trigger_kwargs: dict[str, Any]
    user_inputs: list[State]
    no_uncompleted_instance: bool
    first_run: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class ScheduleTick:
    """A claimed tick's outcome: the schedule's next tick (None: no more), and the process the tick started
    (None: skipped)."""

    schedule_id: UUID
    schedule_name: str
    tick_at: datetime
    next_run_at: datetime | None
    pid: UUID | None


class ScheduleStatements(Statements):
    async def list_schedules(self) -> list[dict[str, Any]]:
        return [dict(r.items()) for r in await self.pool.fetch(_SELECT + " ORDER BY s.name, s.created_at")]

    async def get_schedule(self, schedule_id: UUID) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(_SELECT + " WHERE s.schedule_id = $1", schedule_id)
        return dict(row.items()) if row is not None else None

    async def insert_schedule(
        self,
        *,
        name: str,
        workflow_id: UUID,
        trigger: str,
        trigger_kwargs: dict[str, Any],
        user_inputs: list[State],
        no_uncompleted_instance: bool,
        next_run_at: datetime | None,
        created_at: datetime,
    ) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            _INSERT,
            name,
            workflow_id,
            trigger,
            trigger_kwargs,
            user_inputs,
            no_uncompleted_instance,
            next_run_at,
            created_at,
        )
        assert row is not None
        self._wake_timers(next_run_at)
        return dict(row.items())

    async def update_schedule(
        self,
        schedule_id: UUID,
        *,
        name: str,
        trigger: str,
        trigger_kwargs: dict[str, Any],
        next_run_at: datetime | None,
        created_at: datetime,
    ) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(_UPDATE, schedule_id, name, trigger, trigger_kwargs, next_run_at, created_at)
        if row is None:
            return None
        self._wake_timers(next_run_at)
        return dict(row.items())

    async def delete_schedule(self, schedule_id: UUID) -> bool:
        result = await self.pool.execute("DELETE FROM schedules WHERE schedule_id = $1", schedule_id)
        return bool(result != "DELETE 0")

    async def upsert_code_schedules(self, schedules: Sequence[CodeSchedule], workflow_ids: Sequence[UUID]) -> None:
        """Insert or update the schedules this program declares in code; drop those its workflows no longer
        declare (schedules of workflows this program does not load are left alone)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if schedules:
                columns = [
                    [getattr(s, name) for s in schedules]
                    for name in ("name", "workflow_id", "trigger", "trigger_kwargs")
                ]
                # A list in an array parameter would be read as a dimension: the pages go as JSON text.
                columns.append([jsonutil.dumps_str(s.user_inputs) for s in schedules])
                columns.append([s.no_uncompleted_instance for s in schedules])
                columns.append(["code"] * len(schedules))
                columns.append([s.first_run for s in schedules])
                columns.append([s.created_at for s in schedules])
                await conn.execute(_UPSERT_CODE, *columns)
            await conn.execute(_DROP_STALE_CODE, list(workflow_ids), [s.name for s in schedules])
        self._wake_timers(min((s.first_run for s in schedules if s.first_run), default=None))

    async def claim_due_schedules(
        self, tx: Transaction, workflow_names: Sequence[str], limit: int
    ) -> list[dict[str, Any]]:
        """Lock up to `limit` due schedules of workflows in `workflow_names`, most overdue first, until `tx` ends
        (rows another program holds are skipped); each with the database's `now` and the status of the process
        its previous tick started (`last_status`)."""
        return [dict(r.items()) for r in await tx.conn.fetch(_CLAIM_DUE, list(workflow_names), limit)]

    async def advance_schedules(self, tx: Transaction, ticks: Sequence[ScheduleTick]) -> None:
        """Move claimed schedules to their next tick, and record the processes their ticks started."""
        if not ticks:
            return
        await tx.conn.execute(
            _ADVANCE, [t.schedule_id for t in ticks], [t.next_run_at for t in ticks], [t.pid for t in ticks]
        )
        runs = [t for t in ticks if t.pid is not None]
        if runs:
            await tx.conn.execute(
                _RECORD_RUNS,
                [t.pid for t in runs],
                [t.schedule_id for t in runs],
                [t.schedule_name for t in runs],
                [t.tick_at for t in runs],
            )

    async def schedule_run_of(self, pid: UUID) -> dict[str, Any] | None:
        """The schedule that started a process (`schedule_id`, `schedule_name`, `tick_at`); None if none did."""
        row = await self.pool.fetchrow(_RUN_OF, pid)
        return dict(row.items()) if row is not None else None

    def _wake_timers(self, due: datetime | None) -> None:
        if due is not None:
            self.events.publish({"due": due.timestamp()}, channel=TIMERS_CHANNEL)
