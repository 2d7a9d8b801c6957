"""Statements on one process: insert, resume, finish, abort and delete it, and read it back.

A process's own writes are single statements (the row, its input and its step row together), so each is atomic
by itself and, as the last statement of a transaction, costs one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from orchestrator.dsl.types import ProcessStatus, State
from orchestrator.persistence.creates import CREATE_MANY, NewRow, ProcessCreator
from orchestrator.persistence.groupcommit import GroupCommit, columns
from orchestrator.persistence.records import Claim, Dispatch, Lease, NewProcess, ProcessRef, StepRow
from orchestrator.persistence.resumes import RESUME_MANY, ProcessResumer, ResumeRow
from orchestrator.persistence.statements import Statements
from orchestrator.persistence.transaction import Transaction

STEPS_AGG = """
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'stepid', s.stepid, 'name', s.name, 'status', s.status, 'state', s.state,
                'created_by', s.created_by, 'branch', s.branch, 'started_at', s.started_at,
                'completed_at', s.completed_at)
            ORDER BY s.completed_at, s.seq), '[]'::jsonb)
       FROM process_steps s WHERE s.pid = {alias}.pid{only})
"""
"""The step rows of the process aliased `{alias}` (`only`: a further condition on `s`, or ""), oldest first, as one
JSON array (read with `step_rows`)."""

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

_ABORT = """
WITH p AS (
    UPDATE processes
       SET last_status = 'aborted', last_step = 'User Aborted', failed_reason = NULL, traceback = NULL,
           lease_owner = NULL, lease_expires_at = NULL, fencing_token = fencing_token + 1, last_modified_at = now()
     WHERE pid = $1 AND last_status <> 'completed'
 RETURNING pid
), b AS (
    UPDATE process_branches SET status = 'stopped', lease_owner = NULL, lease_expires_at = NULL,
           fencing_token = fencing_token + 1, modified_at = now()
     WHERE pid = $1 AND status <> 'stopped' AND EXISTS (SELECT 1 FROM p)
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

_LOAD = f"""
SELECT p.*, w.name AS workflow_name, w.target AS workflow_target, {STEPS_AGG.format(alias="p", only="")} AS steps,
       (SELECT t.due_at FROM process_timers t WHERE t.pid = p.pid) AS next_attempt_at,
       (SELECT r.schedule_id FROM schedule_runs r WHERE r.pid = p.pid) AS schedule_id
  FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
 WHERE p.pid = ANY($1::uuid[])
"""

_LATEST_INPUT = """
SELECT input_state FROM input_states WHERE pid = $1 AND input_type = $2 ORDER BY input_time DESC LIMIT 1
"""

_LOCK_FOR_DISPATCH = """
SELECT p.is_task, w.target, p.last_status
  FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
 WHERE p.pid = $1
   FOR UPDATE OF p
"""

_TARGET = "SELECT w.target FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id WHERE p.pid = $1"
_STATUSES = "SELECT pid, last_status FROM processes WHERE pid = ANY($1::uuid[])"


class ProcessStatements(Statements):
    creates: ProcessCreator
    resumes: ProcessResumer
    loads: GroupCommit[UUID, dict[str, Any] | None]

    async def create_process(
        self, tx: Transaction, process: NewProcess, slot: Lease | Dispatch | None = None
    ) -> int | None:
        """Insert a process and its initial input (the transaction's last statement): `created`, with a `Dispatch`
        its outbox row too, or with a `Lease` already `running`, claimed by the lease's owner, who gets the claim
        once it has committed. Return the fencing token of that claim (0 without a lease); None, and nothing
        written, if the engine is paused. Group-committed (`creates.py`) unless `tx` has begun."""
        row = NewRow.of(process, slot)
        token: int | None
        if tx.begun:
            found = await tx.fetchrow_last(CREATE_MANY, *columns([row]))
            token = None if found is None else found["fencing_token"]
        else:
            token = await self.creates.create(row)
        if token is None:
            return None
        lease = slot if isinstance(slot, Lease) else None
        self._announce(tx, process.pid, "running" if lease else "created")
        if lease is not None:
            claim = process.claim(token)
            tx.on_commit(lambda: lease.on_claimed(claim))
        return token

    async def mark_resumed(
        self,
        tx: Transaction,
        *,
        pid: UUID,
        seen_status: str,
        user: str,
        user_input: State,
        seen_token: int | None = None,
        lease: Lease | None = None,
        rows: Sequence[StepRow] = (),
    ) -> bool:
        """Compare-and-set `seen_status` (and `seen_token`: no run came in between) → resumed and store the input
        (the transaction's last statement); False if the status changed meanwhile or the engine is paused.

        With a lease the process goes straight to `running`, claimed by the lease's owner, who gets the claim (with
        `rows`, the step rows read with `seen_token`, unchanged since: no run came in between) once it has
        committed: the claim's statement and the reload of the steps are saved."""
        owner, ttl = (lease.owner, lease.ttl) if lease else (None, None)
        resume = ResumeRow(pid, seen_status, user, user_input, owner, ttl, seen_token)
        if tx.begun:  # an outbox dispatch was written before it: in that transaction
            row = await tx.fetchrow_last(RESUME_MANY, *columns([resume]))
        else:  # group-committed with concurrent resumes
            row = await self.resumes.resume(resume)
        if row is None:
            return False
        self._announce(tx, pid, "resumed")  # subscribers see a resume as such, claimed at once or not
        if lease is not None:
            self._announce(tx, pid, "running")
            claim = Claim(
                pid=pid,
                token=row["fencing_token"],
                workflow_name=row["workflow_name"],
                target=row["target"],
                is_task=row["is_task"],
                created_by=row["created_by"],
                run_by=user,
                rows=list(rows),
                initial_state=row["initial_state"],
                pending_input=user_input,
            )
            tx.on_commit(lambda: lease.on_claimed(claim))
        return True

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

    async def delete(self, pid: UUID) -> bool:
        result = await self.pool.execute("DELETE FROM processes WHERE pid = $1", pid)
        return bool(result != "DELETE 0")

    async def load(self, pid: UUID) -> dict[str, Any] | None:
        """A process row with its workflow's name and target, its step rows (oldest first), the due time of its
        timer (`next_attempt_at`) and the schedule that started it (`schedule_id`). Read in one statement with
        the reads that concurrent requests make meanwhile (`groupcommit.py`): a resume's read, at concurrency."""
        return await self.loads.submit(pid)

    async def _load_many(self, pids: list[UUID]) -> list[dict[str, Any] | None]:
        """The reads that concurrent requests make while one is in flight, in one statement."""
        found = {row["pid"]: row for row in await self.pool.fetch(_LOAD, pids)}
        return [dict(row.items()) if (row := found.get(pid)) is not None else None for pid in pids]

    async def latest_input(self, pid: UUID, input_type: str) -> State | None:
        value: State | None = await self.pool.fetchval(_LATEST_INPUT, pid, input_type)
        return value

    async def lock_for_dispatch(self, tx: Transaction, pid: UUID, user: str) -> tuple[ProcessRef, str] | None:
        """Lock the process until `tx` ends and return where a dispatch by `user` goes, with the process's status
        (None if it does not exist): the status cannot change before the dispatch commits."""
        row = await tx.conn.fetchrow(_LOCK_FOR_DISPATCH, pid)
        if row is None:
            return None
        return ProcessRef(pid, row["is_task"], row["target"], user), row["last_status"]

    async def target_of(self, pid: UUID) -> str | None:
        """The target of the process's workflow; None if the process does not exist."""
        target: str | None = await self.pool.fetchval(_TARGET, pid)
        return target

    async def statuses(self, pids: Sequence[UUID]) -> dict[UUID, str]:
        """The status of each of `pids` that exists."""
        return {r["pid"]: r["last_status"] for r in await self.pool.fetch(_STATUSES, list(pids))}
