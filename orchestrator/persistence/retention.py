"""Retention: delete completed processes older than a cut-off, in small batches.

Each batch is one short statement: it locks at most `batch` completed processes, skipping any another program
holds (`FOR UPDATE SKIP LOCKED`), and deletes them with their step rows, inputs and timers (ON DELETE CASCADE)
and their schedule-run links. Running processes are never touched and never wait on it; a concurrent prune takes
other rows. The scan is the partial index of completed processes by start (migration 0006): a process last
changed before the cut-off started before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

_CANDIDATES = """
    SELECT pid FROM processes
     WHERE last_status = 'completed' AND started_at < $1 AND last_modified_at < $1 AND (is_task OR NOT $2::boolean)
     ORDER BY started_at LIMIT $3
"""

PRUNE_BATCH = f"""
WITH x AS ({_CANDIDATES} FOR UPDATE SKIP LOCKED),
r AS (DELETE FROM schedule_runs USING x WHERE schedule_runs.pid = x.pid),
s AS (SELECT count(*) AS steps FROM process_steps st JOIN x ON st.pid = x.pid),
d AS (DELETE FROM processes p USING x WHERE p.pid = x.pid RETURNING p.is_task)
SELECT count(*) FILTER (WHERE NOT d.is_task) AS workflows, count(*) FILTER (WHERE d.is_task) AS tasks,
       (SELECT steps FROM s) AS steps
  FROM d
"""
"""One batch: $1 cut-off, $2 tasks only, $3 batch size."""

_COUNT = """
SELECT count(*) FILTER (WHERE NOT p.is_task) AS workflows, count(*) FILTER (WHERE p.is_task) AS tasks,
       coalesce(sum((SELECT count(*) FROM process_steps st WHERE st.pid = p.pid)), 0) AS steps
  FROM processes p
 WHERE p.last_status = 'completed' AND p.started_at < $1 AND p.last_modified_at < $1
   AND (p.is_task OR NOT $2::boolean)
"""


@dataclass
class Pruned:
    workflows: int = 0
    tasks: int = 0
    steps: int = 0

    def add(self, other: Pruned) -> None:
        self.workflows += other.workflows
        self.tasks += other.tasks
        self.steps += other.steps

    @property
    def processes(self) -> int:
        return self.workflows + self.tasks

    @classmethod
    def of(cls, row: asyncpg.Record | None) -> Pruned:
        assert row is not None
        return cls(int(row["workflows"]), int(row["tasks"]), int(row["steps"]))


async def prune_batch(pool: asyncpg.Pool, before: datetime, *, tasks_only: bool, batch: int) -> Pruned:
    """Delete one batch of completed processes last changed before `before`."""
    return Pruned.of(await pool.fetchrow(PRUNE_BATCH, before, tasks_only, batch))


async def count_prunable(pool: asyncpg.Pool, before: datetime, *, tasks_only: bool) -> Pruned:
    """What a prune would remove now (a dry run)."""
    return Pruned.of(await pool.fetchrow(_COUNT, before, tasks_only))
