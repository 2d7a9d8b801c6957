"""The process store: every SQL statement the engine runs, and nothing else.

Writes of a run are fenced: they carry the fencing token of the claim and are refused once another runner has
claimed the process (or it was aborted). A step's outcome (process row, step row, live-update NOTIFY) is one
statement, and that statement also returns the engine lock, so the pause check costs no extra round trip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import asyncpg
import structlog

from orchestrator.dsl.types import ProcessStatus, State, StepStatus
from orchestrator.persistence.events import EVENTS_CHANNEL, EventPublisher
from orchestrator.persistence.groupcommit import GroupCommit
from orchestrator.persistence.stepwriter import StepOutcome, StepWriter

logger = structlog.get_logger(__name__)

__all__ = ["EVENTS_CHANNEL", "Claim", "Lease", "NewProcess", "ProcessRef", "StepRow", "Store", "Transaction"]

OUTBOX_CHANNEL = "orchestrator_outbox"

NOT_CLEARED = (StepStatus.FAILED, StepStatus.SUSPEND, StepStatus.WAITING, StepStatus.AWAITING_CALLBACK)


@dataclass(frozen=True)
class ProcessRef:
    """What a dispatch needs to know about a process: where it goes and who triggered it."""

    pid: UUID
    is_task: bool
    target: str | None
    user: str


@dataclass(frozen=True)
class StepRow:
    stepid: UUID
    name: str
    status: str
    state: State
    created_by: str | None
    completed_at: str | None

    @property
    def cleared(self) -> bool:
        return self.status not in NOT_CLEARED


@dataclass(frozen=True)
class Claim:
    """A process this runner now owns, with everything needed to continue it."""

    pid: UUID
    token: int
    workflow_name: str
    target: str | None
    is_task: bool
    created_by: str | None
    run_by: str
    rows: list[StepRow]
    initial_state: State | None
    pending_input: State | None
    """The latest user input, if it arrived after the last step row (it has not been applied yet)."""


class _ClaimRequest(NamedTuple):
    pid: UUID
    claimable: str
    owner: str
    lease_ttl: float
    run_by: str | None


@dataclass(frozen=True)
class Lease:
    """Who may run a process, and for how long before it is taken over unless renewed."""

    owner: str
    ttl: float


@dataclass(frozen=True)
class NewProcess:
    """A process to insert: its workflow, who starts it and its initial state."""

    pid: UUID
    workflow_id: UUID
    workflow_name: str
    target: str | None
    is_task: bool
    user: str
    initial_state: State

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.is_task, self.target, self.user)

    def claim(self, token: int) -> Claim:
        """The claim of this process inserted under a lease: nothing has run, so there is nothing to load."""
        return Claim(
            pid=self.pid,
            token=token,
            workflow_name=self.workflow_name,
            target=self.target,
            is_task=self.is_task,
            created_by=self.user,
            run_by=self.user,
            rows=[],
            initial_state=self.initial_state,
            pending_input=None,
        )


def _claim(row: Any) -> Claim:
    return Claim(
        pid=row["pid"],
        token=row["fencing_token"],
        workflow_name=row["workflow_name"],
        target=row["target"],
        is_task=row["is_task"],
        created_by=row["created_by"],
        run_by=row["run_by"],
        rows=_rows(row["steps"]),
        initial_state=row["initial_state"],
        pending_input=row["pending_input"],
    )


class Transaction:
    """A database transaction plus callbacks to run once it has committed (in-memory dispatch).

    It begins on its first statement through `conn`. A transaction whose only statement is its last
    (`fetchval_last`/`fetchrow_last`) runs that statement alone: one round trip instead of three, and a single
    statement is atomic by itself.
    """

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._raw = conn
        self._tx: Any = None
        self._after_commit: list[Callable[[], None]] = []
        self._after_rollback: list[Callable[[], None]] = []
        self.conn = _BeginsFirst(self)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Run `callback` if the transaction fails (whatever it wrote is gone)."""
        self._after_rollback.append(callback)

    async def begin(self) -> asyncpg.Connection:
        if self._tx is None:
            tx = self._raw.transaction()
            # Kept only once BEGIN succeeded: a failed or cancelled BEGIN cannot be rolled back, and trying would
            # replace the original error (a CancelledError, on shutdown) with asyncpg's InterfaceError.
            await tx.start()
            self._tx = tx
        return self._raw

    async def fetchval_last(self, query: str, *args: Any) -> Any:
        return await self._raw.fetchval(query, *args)

    async def fetchrow_last(self, query: str, *args: Any) -> Any:
        return await self._raw.fetchrow(query, *args)

    async def _end(self, failed: bool) -> None:
        if self._tx is not None:
            await (self._tx.rollback() if failed else self._tx.commit())


class _BeginsFirst:
    """The transaction's connection: the first statement through it begins the transaction."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    async def execute(self, query: str, *args: Any) -> str:
        return str(await (await self._tx.begin()).execute(query, *args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return list(await (await self._tx.begin()).fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await (await self._tx.begin()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await (await self._tx.begin()).fetchval(query, *args)


def _rows(raw: Sequence[dict[str, Any]] | None) -> list[StepRow]:
    return [
        StepRow(
            stepid=UUID(r["stepid"]),
            name=r["name"],
            status=r["status"],
            state=r["state"] or {},
            created_by=r.get("created_by"),
            completed_at=r.get("completed_at"),
        )
        for r in raw or ()
    ]


_STEPS_AGG = """
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'stepid', s.stepid, 'name', s.name, 'status', s.status, 'state', s.state,
                'created_by', s.created_by, 'started_at', s.started_at, 'completed_at', s.completed_at)
            ORDER BY s.completed_at, s.seq), '[]'::jsonb)
       FROM process_steps s WHERE s.pid = {alias}.pid)
"""

_CLAIM = f"""
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::varchar[], $4::float8[], $5::varchar[])
        AS t(pid, claimable, owner, lease_ttl, run_by)
), c AS (
    UPDATE processes p
       SET last_status = 'running', lease_owner = i.owner,
           lease_expires_at = now() + make_interval(secs => i.lease_ttl),
           fencing_token = p.fencing_token + 1, last_modified_at = now(),
           run_by = coalesce(i.run_by, p.run_by, p.created_by, 'SYSTEM')
      FROM i
     WHERE p.pid = i.pid AND p.last_status = ANY(string_to_array(i.claimable, ','))
       AND (p.last_status <> 'running' OR p.lease_expires_at < now())
       AND NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 RETURNING p.pid, p.workflow_id, p.fencing_token, p.is_task, p.created_by, p.run_by
)
SELECT c.*, w.name AS workflow_name, w.target,
       {_STEPS_AGG.format(alias="c")} AS steps,
       (SELECT i.input_state FROM input_states i
         WHERE i.pid = c.pid AND i.input_type = 'initial_state' ORDER BY i.input_time DESC LIMIT 1) AS initial_state,
       (SELECT i.input_state FROM input_states i
         WHERE i.pid = c.pid AND i.input_type = 'user_input'
           AND i.input_time > coalesce((SELECT max(s.completed_at) FROM process_steps s WHERE s.pid = c.pid),
                                       '-infinity'::timestamptz)
         ORDER BY i.input_time DESC LIMIT 1) AS pending_input
  FROM c JOIN workflows w ON w.workflow_id = c.workflow_id
"""
_FINISH = """
WITH p AS (
    UPDATE processes
       SET last_status = $3::varchar, lease_owner = NULL, lease_expires_at = NULL, last_modified_at = now()
     WHERE pid = $1 AND fencing_token = $2 AND last_status = 'running'
 RETURNING pid, is_task, workflow_id, coalesce(run_by, created_by, 'SYSTEM') AS run_by
)
SELECT p.pid, p.is_task, p.run_by, w.target
  FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""

_CREATE = """
WITH p AS (
    INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, run_by,
                           lease_owner, lease_expires_at, fencing_token)
    SELECT $1, $2, CASE WHEN $6::varchar IS NULL THEN 'created' ELSE 'running' END, $3, $4, $3,
           $6, now() + make_interval(secs => $7::float8), CASE WHEN $6::varchar IS NULL THEN 0 ELSE 1 END
     WHERE NOT coalesce((SELECT bool_or(global_lock) FROM engine_settings), false)
 RETURNING pid, fencing_token
), i AS (
    INSERT INTO input_states (pid, input_state, input_type) SELECT pid, $5, 'initial_state' FROM p
)
SELECT fencing_token FROM p
"""

_RESUME = """
WITH p AS (
    UPDATE processes SET last_status = 'resumed', run_by = $3, last_modified_at = now()
     WHERE pid = $1 AND last_status = $2
 RETURNING pid, is_task, workflow_id
), i AS (
    INSERT INTO input_states (pid, input_state, input_type) SELECT pid, $4, 'user_input' FROM p
)
SELECT p.pid, p.is_task, w.target
  FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""

_ABORT = """
WITH p AS (
    UPDATE processes
       SET last_status = 'aborted', last_step = 'User Aborted', failed_reason = NULL, traceback = NULL,
           lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1, last_modified_at = now()
     WHERE pid = $1 AND last_status <> 'completed'
 RETURNING pid
), s AS (
    INSERT INTO process_steps (pid, name, status, state, created_by, started_at, completed_at)
    SELECT pid, 'User Aborted', 'abort',
           coalesce((SELECT st.state FROM process_steps st
                      WHERE st.pid = $1 AND st.status NOT IN ('failed', 'suspend', 'waiting', 'awaiting_callback')
                      ORDER BY st.completed_at DESC, st.seq DESC LIMIT 1), '{}'::jsonb),
           $2, clock_timestamp(), clock_timestamp()
      FROM p
)
SELECT (SELECT count(*) FROM p) AS aborted, EXISTS (SELECT 1 FROM processes WHERE pid = $1) AS found
"""

_TAKE_OVER_EXPIRED = """
WITH x AS (
    SELECT pid FROM processes
     WHERE last_status = 'running' AND lease_expires_at < now()
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
     ORDER BY last_modified_at LIMIT $2 FOR UPDATE SKIP LOCKED
), p AS (
    UPDATE processes p SET last_modified_at = now() FROM x WHERE p.pid = x.pid
 RETURNING p.pid, p.is_task, p.workflow_id, p.last_status, coalesce(p.run_by, p.created_by, 'SYSTEM') AS run_by
)
SELECT p.pid, p.is_task, p.run_by, p.last_status, w.target FROM p JOIN workflows w ON w.workflow_id = p.workflow_id
"""


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.events = EventPublisher(pool)
        self.steps = StepWriter(pool, self.events)
        self._claims = GroupCommit(self._claim_many)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.pool.acquire() as conn:
            tx = Transaction(conn)
            committed = False
            try:
                try:
                    yield tx
                except BaseException:
                    await tx._end(failed=True)
                    raise
                await tx._end(failed=False)
                committed = True
            finally:
                if not committed:
                    for callback in tx._after_rollback:
                        callback()
        for callback in tx._after_commit:
            callback()

    # --- workflows ------------------------------------------------------------------------------------------

    async def upsert_workflows(self, rows: Sequence[tuple[str, str, str, bool]]) -> dict[str, UUID]:
        """Register code-declared workflows (name, target, description, is_task); return their ids by name."""
        if not rows:
            return {}
        records = await self.pool.fetch(
            """
            INSERT INTO workflows (name, target, description, is_task)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[])
            ON CONFLICT (name) DO UPDATE
               SET target = EXCLUDED.target, is_task = EXCLUDED.is_task, deleted_at = NULL
            RETURNING name, workflow_id
            """,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2][:2000] for r in rows],
            [r[3] for r in rows],
        )
        return {r["name"]: r["workflow_id"] for r in records}

    # --- the life of a process ------------------------------------------------------------------------------

    async def create_process(self, tx: Transaction, process: NewProcess, lease: Lease | None = None) -> int | None:
        """Insert a process and its initial input (the transaction's last statement): `created`, or with a lease
        already `running`, claimed by the lease's owner. Return the fencing token of that claim (0 without a
        lease); None, and nothing written, if the engine is paused."""
        owner, ttl = (lease.owner, lease.ttl) if lease else (None, None)
        token: int | None = await tx.fetchval_last(
            _CREATE, process.pid, process.workflow_id, process.user, process.is_task, process.initial_state, owner, ttl
        )
        if token is not None:
            self._announce(tx, process.pid, "running" if lease else "created")
        return token

    async def mark_resumed(self, tx: Transaction, *, pid: UUID, seen_status: str, user: str, user_input: State) -> bool:
        """Compare-and-set `seen_status` → resumed and store the input (the transaction's last statement);
        False if the status changed meanwhile."""
        resumed = await tx.fetchrow_last(_RESUME, pid, seen_status, user, user_input) is not None
        if resumed:
            self._announce(tx, pid, "resumed")
        return resumed

    async def claim(
        self, pid: UUID, *, statuses: Sequence[str], owner: str, lease_ttl: float, user: str | None
    ) -> Claim | None:
        """Compare-and-set the process to `running` for `owner` (group-committed with concurrent claims)."""
        claim = await self._claims.submit(_ClaimRequest(pid, ",".join(statuses), owner, lease_ttl, user))
        if claim is not None:
            self.events.publish({"pid": str(pid), "status": "running"})
        return claim

    async def _claim_many(self, requests: list[_ClaimRequest]) -> list[Claim | None]:
        # Two claims of one process in one batch: only the first is tried (at most one could win anyway).
        first = list({r.pid: r for r in reversed(requests)}.values())
        columns = [[getattr(r, name) for r in first] for name in _ClaimRequest._fields]
        rows = {row["pid"]: row for row in await self.pool.fetch(_CLAIM, *columns)}
        tried = {id(r) for r in first}
        return [_claim(rows[r.pid]) if id(r) in tried and r.pid in rows else None for r in requests]

    async def log_step(
        self,
        *,
        pid: UUID,
        token: int,
        process_status: str,
        step_name: str,
        assignee: str,
        failed_reason: str | None,
        traceback: str | None,
        step_status: str,
        state: State,
        created_by: str,
        started_at: datetime | None,
        replace_stepid: UUID | None,
        lease_ttl: float,
    ) -> tuple[bool, bool, UUID]:
        """Write a step outcome; return (accepted, engine_locked, stepid). Not accepted: the claim is lost."""
        stepid = replace_stepid or uuid4()
        event = {"pid": str(pid), "status": process_status, "step": step_name}
        ok, locked = await self.steps.write(
            StepOutcome(
                pid=pid,
                token=token,
                process_status=process_status,
                step_name=step_name,
                assignee=assignee,
                failed_reason=failed_reason,
                traceback=traceback,
                step_status=step_status,
                state=state,
                created_by=created_by,
                started_at=started_at,
                replace_stepid=replace_stepid,
                stepid=stepid,
                lease_ttl=lease_ttl,
                event=event,
            )
        )
        return ok, locked, stepid

    async def finish(self, tx: Transaction, *, pid: UUID, token: int, status: ProcessStatus) -> ProcessRef | None:
        """End a run without a step row (ran out of steps → completed; paused or shutting down → resumed)."""
        row = await tx.conn.fetchrow(_FINISH, pid, token, status.value)
        if row is None:
            return None
        self._announce(tx, pid, status.value)
        return ProcessRef(row["pid"], row["is_task"], row["target"], row["run_by"])

    async def abort(self, pid: UUID, user: str) -> bool:
        """Abort unless completed; False if the process does not exist. Fences out a runner that is still going."""
        row = await self.pool.fetchrow(_ABORT, pid, user)
        assert row is not None
        if row["aborted"]:
            self.events.publish({"pid": str(pid), "status": "aborted"})
        return bool(row["found"])

    def _announce(self, tx: Transaction, pid: UUID, status: str) -> None:
        tx.on_commit(lambda: self.events.publish({"pid": str(pid), "status": status}))

    async def delete(self, pid: UUID) -> bool:
        result = await self.pool.execute("DELETE FROM processes WHERE pid = $1", pid)
        return bool(result != "DELETE 0")

    # --- recovery ---------------------------------------------------------------------------------------------

    async def take_over_expired(self, tx: Transaction, limit: int = 500) -> list[ProcessRef]:
        """Processes whose runner stopped renewing its lease: fence it out and mark them `resumed`."""
        rows = await tx.conn.fetch(_TAKE_OVER_EXPIRED, limit)
        for r in rows:
            self._announce(tx, r["pid"], "resumed")
        return [ProcessRef(r["pid"], r["is_task"], r["target"], r["run_by"]) for r in rows]

    async def fail_timed_out_callbacks(self) -> list[UUID]:
        """Processes awaiting a callback past their `callback_step(timeout=...)`: their awaiting row is overwritten
        as failed ("Callback timed out"), as orchestrator-core's task does; a retry runs the callback step again."""
        rows = await self.pool.fetch(_FAIL_TIMED_OUT_CALLBACKS)
        for r in rows:
            self.events.publish({"pid": str(r["pid"]), "status": "failed"})
        return [r["pid"] for r in rows]

    async def undispatched(self, tx: Transaction, older_than: float, limit: int = 1000) -> list[tuple[ProcessRef, str]]:
        """Processes left `created`/`resumed` for `older_than` seconds (a lost dispatch), with their status."""
        rows = await tx.conn.fetch(_UNDISPATCHED, older_than, limit)
        return [(ProcessRef(r["pid"], r["is_task"], r["target"], r["run_by"]), r["last_status"]) for r in rows]

    async def renew_leases(self, owner: str, pids: Sequence[UUID], lease_ttl: float) -> None:
        if pids:
            await self.pool.execute(
                """UPDATE processes SET lease_expires_at = now() + make_interval(secs => $3)
                    WHERE pid = ANY($2::uuid[]) AND lease_owner = $1 AND last_status = 'running'""",
                owner,
                list(pids),
                lease_ttl,
            )

    async def heartbeat(
        self,
        *,
        worker_id: str,
        kind: str,
        queues: Sequence[str],
        hostname: str,
        os_pid: int,
        capacity: int,
        running: int,
    ) -> None:
        await self.pool.execute(
            """
            INSERT INTO workers (worker_id, kind, queues, hostname, os_pid, capacity, running)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (worker_id) DO UPDATE
               SET heartbeat_at = now(), running = EXCLUDED.running, capacity = EXCLUDED.capacity
            """,
            worker_id,
            kind,
            list(queues),
            hostname,
            os_pid,
            capacity,
            running,
        )

    async def remove_worker(self, worker_id: str) -> None:
        await self.pool.execute("DELETE FROM workers WHERE worker_id = $1", worker_id)

    # --- reads --------------------------------------------------------------------------------------------------

    async def load(self, pid: UUID) -> dict[str, Any] | None:
        """A process row with its workflow's name and target and its step rows (oldest first)."""
        row = await self.pool.fetchrow(
            f"""
            SELECT p.*, w.name AS workflow_name, w.target AS workflow_target, {_STEPS_AGG.format(alias="p")} AS steps
              FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
             WHERE p.pid = $1
            """,
            pid,
        )
        return dict(row.items()) if row is not None else None

    async def latest_input(self, pid: UUID, input_type: str) -> State | None:
        value: State | None = await self.pool.fetchval(
            """SELECT input_state FROM input_states WHERE pid = $1 AND input_type = $2
                ORDER BY input_time DESC LIMIT 1""",
            pid,
            input_type,
        )
        return value

    async def engine_locked(self) -> bool:
        return bool(await self.pool.fetchval("SELECT coalesce(bool_or(global_lock), false) FROM engine_settings"))

    async def set_engine_lock(self, tx: Transaction, locked: bool) -> bool:
        """Set the lock; return its previous value."""
        previous = await tx.conn.fetchval("SELECT global_lock FROM engine_settings FOR UPDATE")
        await tx.conn.execute("UPDATE engine_settings SET global_lock = $1", locked)
        tx.on_commit(lambda: self.events.publish({"engine": True}))
        return bool(previous)

    async def running_count(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM processes WHERE last_status = 'running' AND lease_expires_at > now()"
            )
        )


@dataclass
class LastRow:
    """What the engine remembers of the most recent step row, to replace it or collapse repeated failures."""

    stepid: UUID
    name: str
    status: str
    created_by: str | None
    state: State = field(default_factory=dict)
    completed_at: str | None = None
