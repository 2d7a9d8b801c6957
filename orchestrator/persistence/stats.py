"""Aggregates for monitoring: processes by status, workers and their load (from heartbeats and leases, never from
the broker), step durations. Each is one statement, so that every API instance reports the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator.dsl.types import ProcessStatus
from orchestrator.persistence.step_durations import HISTOGRAM_SQL, cumulative

_STATUS_COUNTS = """
SELECT last_status, is_task, sum(n) AS n FROM process_status_counts GROUP BY 1, 2 HAVING sum(n) <> 0
"""
"""Processes by status and kind, from the counters the triggers of migration 0006 keep (no scan of `processes`)."""


async def status_counts(pool: asyncpg.Pool) -> list[tuple[bool, str, int]]:
    """(is_task, status, count) for every status that occurs."""
    rows = await pool.fetch(_STATUS_COUNTS)
    return [(bool(r["is_task"]), str(r["last_status"]), int(r["n"])) for r in rows]


@dataclass(frozen=True)
class WorkerCounts:
    online: int
    """Workers with a heartbeat within `online_within` seconds."""
    queued: int
    """Processes waiting for a runner (created or resumed)."""
    running: int
    """Processes running under a live lease."""


async def worker_counts(pool: asyncpg.Pool, online_within: float) -> WorkerCounts:
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM workers WHERE heartbeat_at > now() - make_interval(secs => $1)) AS online,
               (SELECT count(*) FROM processes WHERE last_status IN ('created', 'resumed')) AS queued,
               (SELECT count(*) FROM processes WHERE last_status = 'running' AND lease_expires_at > now()) AS running
        """,
        online_within,
    )
    assert row is not None
    return WorkerCounts(int(row["online"]), int(row["queued"]), int(row["running"]))


@dataclass(frozen=True)
class QueueWorkers:
    queue: str
    online: int
    capacity: int


async def queue_workers(pool: asyncpg.Pool, online_within: float) -> list[QueueWorkers]:
    """Per queue some worker consumes: the workers online and the processes they can run at once."""
    rows = await pool.fetch(
        """SELECT q AS queue, count(*) AS online, sum(capacity) AS capacity
             FROM workers, unnest(queues) AS q
            WHERE heartbeat_at > now() - make_interval(secs => $1) GROUP BY q""",
        online_within,
    )
    return [QueueWorkers(str(r["queue"]), int(r["online"]), int(r["capacity"] or 0)) for r in rows]


@dataclass(frozen=True)
class ProcessLoad:
    is_task: bool
    target: str
    running: bool
    """Running under a live lease; otherwise waiting for a runner (created or resumed)."""
    count: int


async def process_load(pool: asyncpg.Pool) -> list[ProcessLoad]:
    """Processes waiting for or held by a runner, by kind and workflow target (what picks their queue)."""
    rows = await pool.fetch(
        """SELECT p.is_task, w.target, p.last_status = 'running' AS running, count(*) AS n
             FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
            WHERE p.last_status IN ('created', 'resumed') OR (p.last_status = 'running' AND p.lease_expires_at > now())
            GROUP BY 1, 2, 3"""
    )
    return [ProcessLoad(bool(r["is_task"]), str(r["target"]), bool(r["running"]), int(r["n"])) for r in rows]


@dataclass(frozen=True)
class MetricsSnapshot:
    processes: list[tuple[str, bool, int]]
    """(status, is_task, count) for every status that occurs."""
    step_buckets: list[tuple[float, int]]
    """Cumulative (upper bound, steps that took at most that long), one per bound."""
    step_count: int
    step_seconds: float
    workers_online: int
    running: int
    capacity: int
    branches: int = 0
    """Branches of `parallel`/`map_parallel` that wrote a step row (distinct process and branch path)."""
    branch_steps: int = 0
    """Step rows written by branches."""

    @property
    def queue_depth(self) -> int:
        waiting = (ProcessStatus.CREATED, ProcessStatus.RESUMED)
        return sum(n for status, _, n in self.processes if status in waiting)


async def metrics_snapshot(pool: asyncpg.Pool, online_within: float) -> MetricsSnapshot:
    """Aggregates for /metrics, one round trip, each read from an index or a counters table (no scan of history:
    a scrape costs the same on a database of millions of processes)."""
    row = await pool.fetchrow(
        f"""
        WITH b AS (SELECT pid, branch, count(*) AS n FROM process_steps WHERE branch IS NOT NULL GROUP BY 1, 2)
        SELECT (SELECT coalesce(jsonb_agg(jsonb_build_array(last_status, is_task, n)), '[]')
                  FROM ({_STATUS_COUNTS}) s) AS processes,
               ({HISTOGRAM_SQL}) AS buckets,
               (SELECT count(*) FROM b) AS branches, (SELECT coalesce(sum(n), 0) FROM b) AS branch_steps,
               count(w.*) AS online, coalesce(sum(w.running), 0) AS running, coalesce(sum(w.capacity), 0) AS capacity
          FROM workers w WHERE w.heartbeat_at > now() - make_interval(secs => $1)
        """,
        online_within,
    )
    assert row is not None
    step_buckets, step_count, step_seconds = cumulative(row["buckets"])
    return MetricsSnapshot(
        processes=[(str(s), bool(t), int(n)) for s, t, n in row["processes"]],
        step_buckets=step_buckets,
        step_count=step_count,
        step_seconds=step_seconds,
        workers_online=int(row["online"]),
        running=int(row["running"]),
        capacity=int(row["capacity"]),
        branches=int(row["branches"]),
        branch_steps=int(row["branch_steps"]),
    )
