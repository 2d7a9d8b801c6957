"""Distributed branches: a fork's branches handed out as messages, each claimed, leased and fenced on its own
`process_branches` row, and the fork's join decided by compare-and-set when its last branch stops.

- `detach_fork`: the run holding the process lets it go (still `running`, no lease) and writes one branch row per
  branch and one outbox message per batch of branches, in one statement fenced by its token; the first batch may
  instead be claimed in that statement by the worker that reached the fork, which runs it at once.
- `claim` (group-committed): a message carries a batch of a fork's branches; the worker claims as many of them as it
  has free run slots for, each by compare-and-set on its row (`dispatched` → `running` for this worker, token
  bumped); a duplicate or stale message finds another status and claims nothing. While the engine is paused the
  branches are parked instead.
- `stop` (group-committed), or the branch's last step write (`stepwriter.py`) in the same statement: the branch is
  `stopped` and its process's `open_branches` decremented (`JOIN_WHEN_LAST`); the statement that brings it to 0
  claims the process for this worker, which then joins or settles the fork.
- `park`: a branch that stopped before its next step (pause, shutdown) is `paused`, or dispatched again.
- `resend`: a delivery handed back (no free slot, shutdown), or the part of a batch beyond the free slots.
- `redispatch` (the sweeper): expired leases, lost messages, and parked branches once the engine runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

import asyncpg

from orchestrator.persistence.claims import CLAIM_LOAD, claim_of
from orchestrator.persistence.events import OUTBOX_CHANNEL, EventPublisher
from orchestrator.persistence.groupcommit import GroupCommit
from orchestrator.persistence.records import Claim

JOIN_WHEN_LAST = """, j AS (
    UPDATE processes pr
       SET open_branches = CASE WHEN pr.open_branches = s.n THEN -1 ELSE pr.open_branches - s.n END,
           lease_owner = CASE WHEN pr.open_branches = s.n THEN s.owner END,
           lease_expires_at = CASE WHEN pr.open_branches = s.n THEN now() + make_interval(secs => s.lease_ttl) END,
           fencing_token = pr.fencing_token + CASE WHEN pr.open_branches = s.n THEN 1 ELSE 0 END
      FROM (SELECT b.pid, count(*)::int AS n, min(b.owner) AS owner, min(b.lease_ttl) AS lease_ttl
              FROM b GROUP BY b.pid) s
     WHERE pr.pid = s.pid AND pr.last_status = 'running' AND pr.lease_owner IS NULL
       AND EXISTS (SELECT 1 FROM b)  -- no branch stopped: not even a scan (see below)
 RETURNING pr.pid, pr.fencing_token, pr.open_branches
)"""
"""Appended to a statement whose CTE `b` returns (pid, owner, lease_ttl) per branch it stopped: `j` returns the
processes touched, with `open_branches` -1 for those this statement claimed for `owner` to join (migration 0004).
The EXISTS gate skips the update outright when no branch stopped (every step writer's statement without one): its
cached generic plan may scan the `running` entries of `ix_processes_status_kind`, dead ones included, before
finding `b` empty (0.57 → 0.44 ms of execution per step write, measured; issue 16).

-1 marks the fork *closed*: every branch stopped, the join (or the settling) not yet written. It stays until the
process's next fenced write (the join row, a step row, `settle_fork`) clears it, so that a run that takes the process
over from a holder that died before joining joins from the rows too (`Claim.closing`), instead of reaching the fork
afresh and running a failed branch again. A resume of the settled fork (a retry) finds it cleared: the failed
branches are dispatched again."""

_OWN_ROWS = " AND (s.branch IS NULL OR s.branch = c.path OR left(s.branch, length(c.path) + 1) = c.path || '/')"
"""A branch claim loads the workflow's own rows and its branch's (with nested ones), not its siblings'."""

# The first `$10` branches are claimed for `$8` in the statement itself (`running`, leased; `paused` while the engine
# is), sent in no message: the worker that reached the fork runs them at once. The rest go out one message per batch.
# One row per claimed branch (with the `CLAIM_LOAD` columns), or one row of NULLs; `detached` 0: the claim was lost.
_DETACH = (
    """
WITH p AS (
    UPDATE processes SET lease_owner = NULL, lease_expires_at = NULL, last_modified_at = now(),
           open_branches = cardinality($3::varchar[])
     WHERE pid = $1 AND fencing_token = $2 AND last_status = 'running'
 RETURNING pid, workflow_id, is_task, created_by, coalesce(run_by, created_by, 'SYSTEM') AS run_by
), paused AS (
    SELECT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false) AS on
), g AS (
    SELECT t.*, t.ord <= $10 AS here FROM unnest($3::varchar[], $7::int[]) WITH ORDINALITY AS t(path, grp, ord)
), b AS (
    INSERT INTO process_branches AS pb (pid, path, queue, actor, run_by, status, lease_owner, lease_expires_at)
    SELECT p.pid, g.path, $4, $5, $6,
           CASE WHEN NOT g.here THEN 'dispatched' WHEN paused.on THEN 'paused' ELSE 'running' END,
           CASE WHEN g.here AND NOT paused.on THEN $8 END,
           CASE WHEN g.here AND NOT paused.on THEN now() + make_interval(secs => $9) END
      FROM p, g, paused
        ON CONFLICT (pid, path) DO UPDATE
       SET status = excluded.status, fencing_token = pb.fencing_token + 1, lease_owner = excluded.lease_owner,
           lease_expires_at = excluded.lease_expires_at, queue = excluded.queue, actor = excluded.actor,
           run_by = excluded.run_by, modified_at = now()
 RETURNING pb.pid, pb.path, pb.fencing_token, pb.status
), o AS (
    INSERT INTO outbox (queue, actor, pid, run_by, branches)
    SELECT $4, $5, p.pid, $6, array_agg(g.path ORDER BY g.ord) FROM p, g WHERE NOT g.here GROUP BY p.pid, g.grp
), c AS (
    SELECT b.pid, b.path, p.workflow_id, b.fencing_token, p.is_task, p.created_by, p.run_by
      FROM b JOIN p ON p.pid = b.pid WHERE b.status = 'running'
)
SELECT d.detached, l.* FROM (SELECT count(*) AS detached FROM p) d LEFT JOIN ("""
    + CLAIM_LOAD.format(only=_OWN_ROWS)
    + """) l ON true
"""
)

# Each request (a batch message's branches, in branch order) claims at most `k` of its branches that are still
# `dispatched`, skipping rows another statement holds (a concurrent duplicate claims them, or the sweeper or an
# abort is changing them); the rows it locks but leaves (over `k`) stay `dispatched` for the message that sends them.
# Each branch is looked up by its key, one request row at a time (LATERAL): joined as sets, the planner may start from
# every running process when its statistics are stale (a young database), and scan a large fork's rows per branch.
_CLAIM = """
WITH i AS (
    SELECT * FROM unnest($1::int[], $2::uuid[], $3::varchar[]) WITH ORDINALITY AS t(req, pid, path, ord)
), r AS (
    SELECT * FROM unnest($4::int[], $5::int[]) AS t(req, k)
), paused AS (
    SELECT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false) AS on
), x AS (
    SELECT b.pid, b.path, i.req, i.ord FROM i CROSS JOIN LATERAL (
        SELECT b.pid, b.path FROM process_branches b
         WHERE b.pid = i.pid AND b.path = i.path AND b.status = 'dispatched'
           AND EXISTS (SELECT 1 FROM processes p WHERE p.pid = b.pid AND p.last_status = 'running')
           FOR UPDATE OF b SKIP LOCKED
    ) b
), y AS (
    SELECT n.pid, n.path FROM (SELECT x.*, row_number() OVER (PARTITION BY x.req ORDER BY x.ord) AS n FROM x) n
      JOIN r ON r.req = n.req WHERE n.n <= r.k
), b AS (
    UPDATE process_branches b
       SET status = CASE WHEN paused.on THEN 'paused' ELSE 'running' END,
           lease_owner = CASE WHEN paused.on THEN NULL ELSE $6 END,
           lease_expires_at = CASE WHEN paused.on THEN NULL ELSE now() + make_interval(secs => $7) END,
           fencing_token = b.fencing_token + 1, modified_at = now()
      FROM y, paused
     WHERE b.pid = y.pid AND b.path = y.path
 RETURNING b.pid, b.path, b.fencing_token, b.status
), c AS (
    SELECT b.pid, b.path, p.workflow_id, b.fencing_token, p.is_task, p.created_by,
           coalesce(p.run_by, p.created_by, 'SYSTEM') AS run_by
      FROM b JOIN processes p ON p.pid = b.pid WHERE b.status = 'running'
)""" + CLAIM_LOAD.format(only=_OWN_ROWS)

_STOP = f"""
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::bigint[]) AS t(pid, path, token)
), b AS (
    UPDATE process_branches b
       SET status = 'stopped', lease_owner = NULL, lease_expires_at = NULL, modified_at = now()
      FROM i WHERE b.pid = i.pid AND b.path = i.path AND b.fencing_token = i.token AND b.status = 'running'
 RETURNING b.pid, $4::varchar AS owner, $5::float8 AS lease_ttl
){JOIN_WHEN_LAST}
SELECT pid, fencing_token FROM j WHERE open_branches < 0
"""

_LOAD = """
WITH c AS (
    SELECT pid, workflow_id, fencing_token, is_task, created_by, coalesce(run_by, created_by, 'SYSTEM') AS run_by
      FROM processes WHERE pid = $1 AND fencing_token = $2 AND last_status = 'running'
)""" + CLAIM_LOAD.format(only="")

_PARK = """
WITH b AS (
    UPDATE process_branches
       SET status = CASE WHEN $4 THEN 'paused' ELSE 'dispatched' END, lease_owner = NULL, lease_expires_at = NULL,
           fencing_token = fencing_token + 1, modified_at = now()
     WHERE pid = $1 AND path = $2 AND fencing_token = $3 AND status = 'running'
 RETURNING pid, path, queue, actor, run_by
)
INSERT INTO outbox (queue, actor, pid, run_by, branch) SELECT queue, actor, pid, run_by, path FROM b WHERE NOT $4
"""

_RESEND = """
INSERT INTO outbox (queue, actor, pid, run_by, branches)
SELECT b.queue, b.actor, b.pid, b.run_by, array_agg(b.path ORDER BY t.ord)
  FROM process_branches b JOIN unnest($2::varchar[]) WITH ORDINALITY AS t(path, ord) ON t.path = b.path
 WHERE b.pid = $1 AND b.status = 'dispatched'
 GROUP BY b.queue, b.actor, b.pid, b.run_by
"""

_RENEW = """
UPDATE process_branches SET lease_expires_at = now() + make_interval(secs => $2)
 WHERE lease_owner = $1 AND status = 'running'
"""

# A running branch whose lease expired (its worker died), a dispatched one whose message is overdue (lost), a
# parked one once the engine runs: dispatched again, the token bumped so a dead holder can never commit again.
_REDISPATCH = """
WITH paused AS (
    SELECT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false) AS on
), x AS (
    SELECT b.pid, b.path FROM process_branches b, paused
     WHERE (b.status = 'running' AND b.lease_expires_at < now())
        OR (b.status = 'dispatched' AND b.modified_at <= now() - make_interval(secs => $1) AND NOT paused.on)
        OR (b.status = 'paused' AND NOT paused.on)
     ORDER BY b.modified_at LIMIT $2 FOR UPDATE OF b SKIP LOCKED
), b AS (
    UPDATE process_branches b
       SET status = 'dispatched', lease_owner = NULL, lease_expires_at = NULL, fencing_token = b.fencing_token + 1,
           modified_at = now()
      FROM x WHERE b.pid = x.pid AND b.path = x.path
 RETURNING b.pid, b.path, b.queue, b.actor, b.run_by
)
INSERT INTO outbox (queue, actor, pid, run_by, branch) SELECT queue, actor, pid, run_by, path FROM b RETURNING pid
"""


class _ClaimRequest(NamedTuple):
    pid: UUID
    paths: tuple[str, ...]
    limit: int
    owner: str
    lease_ttl: float


class _StopRequest(NamedTuple):
    pid: UUID
    path: str
    token: int
    owner: str
    lease_ttl: float


class BranchClaims:
    def __init__(self, pool: asyncpg.Pool, events: EventPublisher) -> None:
        self.pool = pool
        self.events = events
        self._claims = GroupCommit(self._claim_many)
        self._stops = GroupCommit(self._stop_many)

    def _notify_relays(self) -> None:
        self.events.publish({}, channel=OUTBOX_CHANNEL)

    async def detach_fork(
        self,
        *,
        pid: UUID,
        token: int,
        batches: Sequence[Sequence[str]],
        queue: str,
        actor: str,
        run_by: str,
        here: int = 0,
        owner: str = "",
        lease_ttl: float = 0.0,
    ) -> list[Claim] | None:
        """Let the process go (it stays `running`) and dispatch its branches, one message per batch (a batch: paths in
        branch order, claimed together by the worker that gets it); None when the claim was lost. The first `here`
        branches are claimed for `owner` instead, in the same statement, and returned: the caller runs them. The
        caller wakes the relays (its own, when it publishes: no NOTIFY to every relay per fork)."""
        paths = [path for batch in batches for path in batch]
        groups = [n for n, batch in enumerate(batches) for _ in batch]
        rows = await self.pool.fetch(
            _DETACH, pid, token, paths, queue, actor, run_by, groups, owner, lease_ttl, min(here, len(paths))
        )
        if not rows or not rows[0]["detached"]:
            return None
        return [claim_of(row, branch=row["path"]) for row in rows if row["pid"] is not None]

    async def claim(self, pid: UUID, paths: Sequence[str], *, limit: int, owner: str, lease_ttl: float) -> list[Claim]:
        """Claim for `owner` up to `limit` of these branches of the process that still wait for a worker (first in
        the order given); none for a duplicate, stale or parked message."""
        return await self._claims.submit(_ClaimRequest(pid, tuple(paths), limit, owner, lease_ttl))

    async def _claim_many(self, requests: list[_ClaimRequest]) -> list[list[Claim]]:
        taken: dict[tuple[UUID, str], int] = {}  # a branch named by two requests of the batch: the first's
        for n, request in enumerate(requests):
            for path in request.paths:
                taken.setdefault((request.pid, path), n)
        owner, ttl = requests[0].owner, requests[0].lease_ttl  # one runner per store: the same for all
        rows = await self.pool.fetch(
            _CLAIM,
            list(taken.values()),
            [pid for pid, _ in taken],
            [path for _, path in taken],
            list(range(len(requests))),
            [r.limit for r in requests],
            owner,
            ttl,
        )
        claimed: list[list[Claim]] = [[] for _ in requests]
        order = {key: n for n, key in enumerate(taken)}
        for row in sorted(rows, key=lambda row: order[(row["pid"], row["path"])]):
            claimed[taken[(row["pid"], row["path"])]].append(claim_of(row, branch=row["path"]))
        return claimed

    async def stop(self, claim: Claim, *, owner: str, lease_ttl: float) -> Claim | None:
        """Stop the branch `claim` holds; the claim of its process when this was the fork's last open branch."""
        assert claim.branch is not None
        token = await self._stops.submit(_StopRequest(claim.pid, claim.branch, claim.token, owner, lease_ttl))
        return None if token is None else await self.load(claim.pid, token)

    async def load(self, pid: UUID, token: int) -> Claim | None:
        """The claim of a process a branch's stop handed over (with `token`), with all its rows."""
        row = await self.pool.fetchrow(_LOAD, pid, token)
        return None if row is None else claim_of(row)

    async def _stop_many(self, requests: list[_StopRequest]) -> list[int | None]:
        owner, ttl = requests[0].owner, requests[0].lease_ttl  # one runner per store: the same for all
        rows = await self.pool.fetch(
            _STOP, [r.pid for r in requests], [r.path for r in requests], [r.token for r in requests], owner, ttl
        )
        won = {row["pid"]: row["fencing_token"] for row in rows}
        return [won.pop(r.pid, None) for r in requests]  # one winner per process

    async def park(self, claim: Claim, *, paused: bool) -> None:
        """Give the branch up before its next step: `paused` (the engine is), else dispatched again."""
        await self.pool.execute(_PARK, claim.pid, claim.branch, claim.token, paused)
        if not paused:
            self._notify_relays()

    async def resend(self, pid: UUID, paths: Sequence[str]) -> None:
        """Send these branches again, in one message, those that still wait for a worker (a worker handing back a
        delivery, or the part of a batch it had no free run slots for)."""
        await self.pool.execute(_RESEND, pid, list(paths))
        self._notify_relays()

    async def renew(self, owner: str, lease_ttl: float) -> None:
        await self.pool.execute(_RENEW, owner, lease_ttl)

    async def redispatch(self, older_than: float, limit: int = 1000) -> int:
        """Dispatch again the branches whose worker died, whose message was lost, or that wait for an unpause."""
        rows = await self.pool.fetch(_REDISPATCH, older_than, limit)
        if rows:
            self._notify_relays()
        return len(rows)
