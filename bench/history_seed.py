"""Bulk seeding of a history for `python -m bench.history`: completed, failed and suspended processes with five
step rows each, written by SQL in batches (not through the API), as years of use would leave them.

Statuses interleave over time (every 22nd process failed, the 11th of each 22 suspended; a fifth are tasks), and
start times spread evenly over `HISTORY_DAYS`, so filters and time ranges hit realistic mixes. The step-duration
counters are brought up to date at the end, as the step writer would have kept them.
"""

from __future__ import annotations

import time
from typing import Any

from bench.console import note
from orchestrator.persistence.step_durations import NEGATED_BOUNDS

HISTORY_DAYS = 400
BATCH = 50_000

_WORKFLOWS = """
INSERT INTO workflows (name, target, description, is_task)
VALUES ('history_flow', 'CREATE', 'seeded history', false), ('history_task', 'SYSTEM', 'seeded history', true)
ON CONFLICT (name) DO UPDATE SET description = excluded.description
RETURNING workflow_id, is_task
"""

# $1 first index, $2 last index, $3 total, $4 workflow id, $5 task workflow id
_BATCH = """
WITH g AS (
    SELECT i, gen_random_uuid() AS pid, i % 5 = 0 AS is_task,
           CASE WHEN i % 22 = 0 THEN 'failed' WHEN i % 22 = 11 THEN 'suspended' ELSE 'completed' END AS status,
           now() - make_interval(secs => ($3 - i) * ($6::float8 * 86400 / $3)) AS started_at
      FROM generate_series($1::int, $2::int) AS i
), p AS (
    INSERT INTO processes (pid, workflow_id, last_status, last_step, started_at, last_modified_at, failed_reason,
                           traceback, created_by, is_task, fencing_token)
    SELECT pid, CASE WHEN is_task THEN $5::uuid ELSE $4::uuid END, status,
           CASE status WHEN 'completed' THEN 'Done' WHEN 'failed' THEN 'Provision' ELSE 'Ask approval' END,
           started_at, started_at + interval '2 seconds',
           CASE WHEN status = 'failed' THEN 'ConnectionError: the IPAM did not answer' END,
           CASE WHEN status = 'failed' THEN repeat('Traceback line ', 40) END,
           'history', is_task, 1
      FROM g
), s AS (
    INSERT INTO process_steps (pid, name, status, state, created_by, started_at, completed_at)
    SELECT g.pid, (ARRAY['Start', 'Create port', 'Ask approval', 'Provision', 'Done'])[k],
           CASE WHEN k < 5 THEN 'success'
                WHEN g.status = 'completed' THEN 'complete'
                WHEN g.status = 'failed' THEN 'failed' ELSE 'suspend' END,
           jsonb_build_object('process_id', g.pid, 'workflow_name', 'history_flow', 'customer', 'ACME-' || g.i,
                              'port_id', 'port-' || g.i, 'speed_gbps', 10, 'approved', true,
                              'comment', repeat('lorem ipsum ', 6 * k), 'step', k),
           'history', g.started_at + make_interval(secs => 0.4 * (k - 1)),
           g.started_at + make_interval(secs => 0.4 * (k - 1) + 0.01 * k)
      FROM g, generate_series(1, 5) AS k
), i AS (
    INSERT INTO input_states (pid, input_state, input_type, input_time)
    SELECT pid, jsonb_build_object('customer', 'ACME-' || i, 'speed_gbps', 10), 'initial_state', started_at FROM g
)
SELECT count(*) FROM g
"""

_COUNTERS = """
INSERT INTO step_duration_counts AS c (shard, bucket, n, seconds)
SELECT 0, width_bucket(-secs, $1::float8[]), count(*), coalesce(sum(greatest(secs, 0)), 0)
  FROM (SELECT extract(epoch FROM completed_at - started_at)::float8 AS secs FROM process_steps
         WHERE created_by = 'history') d
 GROUP BY 2
    ON CONFLICT (shard, bucket) DO UPDATE SET n = c.n + excluded.n, seconds = c.seconds + excluded.seconds
"""

_SECONDARY_INDEXES = """
SELECT i.relname AS name, pg_get_indexdef(i.oid) AS definition
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
 WHERE t.relname IN ('processes', 'process_steps', 'input_states') AND NOT x.indisprimary
"""

_STATUS_COUNTERS = """
INSERT INTO process_status_counts AS c (backend, last_status, is_task, n)
SELECT 0, last_status, is_task, count(*) FROM processes WHERE created_by = 'history' GROUP BY 2, 3
    ON CONFLICT (backend, last_status, is_task) DO UPDATE SET n = c.n + excluded.n
"""
"""The seed writes with triggers off (session_replication_role = replica): the status counters are brought up
to date here, as the triggers would have kept them."""


async def seed(conn: Any, total: int) -> float:
    """Write `total` processes (5 step rows and an initial input each); returns the seconds it took."""
    t0 = time.monotonic()
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET session_replication_role = replica")  # no per-row foreign-key checks
    indexes = await conn.fetch(_SECONDARY_INDEXES)
    for row in indexes:  # built once at the end: a sort instead of millions of random inserts
        await conn.execute(f'DROP INDEX "{row["name"]}"')
    ids = {row["is_task"]: row["workflow_id"] for row in await conn.fetch(_WORKFLOWS)}
    for first in range(1, total + 1, BATCH):
        last = min(first + BATCH - 1, total)
        await conn.fetchval(_BATCH, first, last, total, ids[False], ids[True], HISTORY_DAYS)
        note(f"seeded {last:,}/{total:,} processes ({time.monotonic() - t0:.0f} s)")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    for row in indexes:
        await conn.execute(row["definition"])
    note(f"indexes rebuilt ({time.monotonic() - t0:.0f} s)")
    await conn.execute("SET session_replication_role = DEFAULT")
    await conn.execute(_COUNTERS, NEGATED_BOUNDS)
    await conn.execute(_STATUS_COUNTERS)
    await conn.execute("VACUUM ANALYZE processes")
    await conn.execute("VACUUM ANALYZE process_steps")
    await conn.execute("VACUUM ANALYZE input_states")
    return time.monotonic() - t0
