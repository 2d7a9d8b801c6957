"""Step outcomes, group-committed: the outcomes concurrent runs produce while a write is in flight are written
together, in one statement and one transaction (`groupcommit.py`).

Every guarantee of a single write holds per outcome: each is fenced by its own run's token (a stale run's outcome
is refused, the others are written), and each run waits until its own outcome is committed before it goes on.

A run may hand over several outcomes of one process as one request (`write(a, b)`): a built-in step's with its
neighbour's (`Step.pure`). They are written in order, all or none, and the process row takes the last one's status.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from orchestrator.dsl.types import State
from orchestrator.persistence.branch_claims import JOIN_WHEN_LAST
from orchestrator.persistence.events import EventPublisher
from orchestrator.persistence.groupcommit import GroupCommit
from orchestrator.persistence.step_durations import DURATION_SHARDS, NEGATED_BOUNDS
from orchestrator.persistence.timers import TIMERS_CHANNEL


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a step left behind: the process's new status and the step row, new (`stepid`) or replacing the last
    one (`replace_stepid`)."""

    pid: UUID
    token: int
    process_status: str
    step_name: str
    assignee: str
    failed_reason: str | None
    traceback: str | None
    step_status: str
    state: State
    created_by: str
    started_at: datetime | None
    replace_stepid: UUID | None
    stepid: UUID
    branch: str | None = None
    fence: str | None = None
    """Distributed mode: the branch of the fork in flight whose `process_branches` row fences this write (`token`
    is then that row's token); None: fenced by the process row, which the write updates."""
    stop: bool = False
    """With `fence`: this outcome ends the branch (its last step, or one that fails or waits): the branch row is
    `stopped` in the same statement, and if it was the fork's last open branch the process is claimed for `owner`."""
    owner: str | None = None
    lease_ttl: float = 0.0
    """With `stop`: the lease `owner` takes on the process if this write hands it over."""
    wake_at: datetime | None = None
    """When a `waiting` process is to continue (a retry attempt, the end of a sleep): a timer row is written."""
    timer_kind: str | None = None
    attempt: int = 0


_MANY = f"""
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[],
                         $7::varchar[], $8::varchar[], $9::jsonb[], $10::varchar[], $11::timestamptz[], $12::uuid[],
                         $13::uuid[], $14::varchar[], $15::timestamptz[], $16::varchar[], $17::int[],
                         $18::varchar[], $19::bool[], $20::varchar[], $21::float8[]) WITH ORDINALITY
        AS t(pid, token, process_status, step_name, assignee, failed_reason, traceback, step_status, state,
             created_by, started_at, replace_id, stepid, branch, wake_at, timer_kind, attempt, fence, stop, owner,
             lease_ttl, ord)
), ts AS MATERIALIZED (
    SELECT clock_timestamp() AS t
), p AS (
    UPDATE processes pr
       SET last_status = i.process_status, last_step = i.step_name, assignee = i.assignee,
           failed_reason = i.failed_reason, traceback = i.traceback, last_modified_at = now(),
           lease_owner = CASE WHEN i.process_status = 'running' THEN pr.lease_owner END,
           lease_expires_at = CASE WHEN i.process_status = 'running' THEN pr.lease_expires_at END,
           open_branches = greatest(pr.open_branches, 0)
      FROM (SELECT DISTINCT ON (pid, token) * FROM i WHERE fence IS NULL ORDER BY pid, token, ord DESC) i
     WHERE pr.pid = i.pid AND pr.fencing_token = i.token AND pr.last_status = 'running'
 RETURNING pr.pid, i.token
), fenced AS (
    UPDATE process_branches b
       SET lease_expires_at = CASE WHEN i.stop THEN NULL ELSE b.lease_expires_at END,
           status = CASE WHEN i.stop THEN 'stopped' ELSE b.status END,
           lease_owner = CASE WHEN i.stop THEN NULL ELSE b.lease_owner END,
           modified_at = CASE WHEN i.stop THEN now() ELSE b.modified_at END
      FROM i
     WHERE b.pid = i.pid AND b.path = i.fence AND b.fencing_token = i.token AND b.status = 'running'
 RETURNING i.stepid, i.stop, i.pid, i.owner, i.lease_ttl
), b AS (
    SELECT pid, owner, lease_ttl FROM fenced WHERE stop
){JOIN_WHEN_LAST}, ok AS (
    SELECT i.* FROM i JOIN p ON p.pid = i.pid AND p.token = i.token WHERE i.fence IS NULL
     UNION ALL
    SELECT i.* FROM i JOIN fenced f ON f.stepid = i.stepid
), ins AS (
    INSERT INTO process_steps (stepid, pid, name, status, state, created_by, started_at, completed_at, branch)
    SELECT ok.stepid, ok.pid, ok.step_name, ok.step_status, ok.state, ok.created_by,
           coalesce(ok.started_at, ts.t), ts.t, ok.branch
      FROM ok, ts WHERE ok.replace_id IS NULL
     ORDER BY ok.ord  -- rows of one statement share completed_at: `seq`, given in this order, orders them
), upd AS (
    UPDATE process_steps s
       SET name = ok.step_name, status = ok.step_status, state = ok.state, completed_at = ts.t
      FROM ok, ts
     WHERE s.stepid = ok.replace_id AND s.pid = ok.pid
), timer AS (
    INSERT INTO process_timers (pid, due_at, kind, attempt)
    SELECT ok.pid, ok.wake_at, ok.timer_kind, ok.attempt FROM ok WHERE ok.wake_at IS NOT NULL AND ok.branch IS NULL
        ON CONFLICT (pid) DO UPDATE SET due_at = excluded.due_at, kind = excluded.kind, attempt = excluded.attempt
), hist AS (
    INSERT INTO step_duration_counts AS c (shard, bucket, n, seconds)
    SELECT $22, width_bucket(-d.secs, $23::float8[]), count(*), sum(greatest(d.secs, 0))
      FROM (SELECT extract(epoch FROM ts.t - coalesce(ok.started_at, ts.t))::float8 AS secs FROM ok, ts) d
     GROUP BY 2
        ON CONFLICT (shard, bucket) DO UPDATE SET n = c.n + excluded.n, seconds = c.seconds + excluded.seconds
)
SELECT (SELECT coalesce(array_agg(stepid), '{{}}') FROM ok) AS ok,
       (SELECT coalesce(array_agg(pid ORDER BY pid), '{{}}') FROM j WHERE open_branches < 0) AS joined,
       (SELECT coalesce(array_agg(fencing_token ORDER BY pid), '{{}}') FROM j WHERE open_branches < 0)
           AS joined_tokens,
       coalesce((SELECT bool_or(global_lock) FROM engine_settings), false) AS locked
"""

_COLUMNS = (
    "pid", "token", "process_status", "step_name", "assignee", "failed_reason", "traceback", "step_status", "state",
    "created_by", "started_at", "replace_stepid", "stepid", "branch", "wake_at", "timer_kind",
    "attempt", "fence", "stop", "owner", "lease_ttl",
)  # fmt: skip
"""StepOutcome fields in the order of the statement's parameters."""


class Written(NamedTuple):
    accepted: bool
    engine_locked: bool
    joined_token: int | None
    """With `stop`: the process's new fencing token when this write stopped its fork's last open branch and claimed
    the process (for the outcome's `owner`); None otherwise."""


class StepWriter:
    def __init__(self, pool: asyncpg.Pool, events: EventPublisher) -> None:
        self.pool = pool
        self.events = events
        self._group = GroupCommit(self._write_many, on_alone_failing=_unstorable)
        first = random.randrange(DURATION_SHARDS)
        self._shards = [(first + i) % DURATION_SHARDS for i in range(self._group.max_in_flight)]
        """A histogram shard per statement in flight: two on one shard would queue on its row lock, the second
        waiting for the first one's commit (its WAL flush) before its own could start."""

    async def write(self, *outcomes: StepOutcome) -> Written:
        """Write the outcomes (one process's, in order) in one statement, all or none; wait for the commit."""
        return await self._group.submit(outcomes)

    async def _write_many(self, requests: list[tuple[StepOutcome, ...]]) -> list[Written]:
        outcomes = [o for request in requests for o in request]
        columns = [[getattr(o, name) for o in outcomes] for name in _COLUMNS]
        shard = self._shards.pop()  # the group commit runs at most `max_in_flight` statements at once
        try:
            row = await self.pool.fetchrow(_MANY, *columns, shard, NEGATED_BOUNDS)
        finally:
            self._shards.append(shard)
        assert row is not None
        accepted = set(row["ok"])
        locked = bool(row["locked"])
        for o in outcomes:
            if o.stepid in accepted:
                event = {"pid": str(o.pid), "status": o.process_status, "step": o.step_name}
                self.events.publish({**event, "branch": o.branch} if o.branch else event)
                if o.wake_at is not None and o.branch is None:  # a branch's: set when its fork settles
                    self.events.publish({"due": o.wake_at.timestamp()}, channel=TIMERS_CHANNEL)
        joined = dict(zip(row["joined"], row["joined_tokens"], strict=True))
        written = []
        for request in requests:
            ok = all(o.stepid in accepted for o in request)
            last = request[-1]
            written.append(Written(ok, locked, joined.pop(last.pid, None) if last.stop and ok else None))
        return written


def _unstorable(exc: Exception) -> Exception:
    if isinstance(exc, asyncpg.DataError):  # e.g. a NUL character in a string
        return ValueError(f"step state cannot be stored: {exc}")
    return exc
