"""Runs the remaining steps of a claimed process, one committed step at a time.

The engine knows nothing of HTTP or brokers. It gets a `Claim` (a process this runner owns, with its step log),
rebuilds the current state the way orchestrator-core reloads a process, applies a pending resume input, and runs
step after step. Each outcome is written with the claim's fencing token; a refused write means another runner
owns the process now, and this run stops without touching anything.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

import anyio
import structlog

from orchestrator.dsl import jsonutil
from orchestrator.dsl.parallel import Fork
from orchestrator.dsl.results import Failed, Process, Success, from_step_status
from orchestrator.dsl.state import (
    ENGINE_KEYS,
    LAST_STEP_STARTED_AT,
    REPLACE_LAST_STATE,
    STEP_GROUP,
    STEP_NAME_OVERRIDE,
    deep_merge,
    error_state,
    is_api_unavailable,
    is_inconsistent_data,
    strip_removed_keys,
)
from orchestrator.dsl.steps import Step, StepList
from orchestrator.dsl.types import Assignee, ProcessStatus, State, StepStatus
from orchestrator.dsl.workflow import Workflow, WorkflowRegistry
from orchestrator.exceptions import ClaimLostError
from orchestrator.ids import time_ordered_uuid
from orchestrator.persistence.records import Claim, ProcessRef, StepRow
from orchestrator.persistence.stepwriter import StepOutcome
from orchestrator.persistence.store import Store
from orchestrator.persistence.transaction import Transaction
from orchestrator.runtime import branches, spread
from orchestrator.runtime.retries import Wake, next_wake

logger = structlog.get_logger(__name__)

FAILED_REASON_LIMIT = 10_000
TRACEBACK_LIMIT = 50_000

Redispatch = Callable[[Transaction, ProcessRef], Awaitable[None]]


@dataclass
class LastRow:
    """What the engine remembers of the most recent step row, to replace it or collapse repeated failures."""

    stepid: UUID
    name: str
    status: str
    created_by: str | None
    state: State = field(default_factory=dict)
    completed_at: str | None = None


class Engine:
    """Shared by every runner of one program: the store, the registry and the thread pool for sync steps."""

    def __init__(
        self,
        store: Store,
        registry: WorkflowRegistry,
        *,
        max_threads: int,
        lease_ttl: float,
        max_branches: int = 10_000,
    ) -> None:
        self.store = store
        self.registry = registry
        self.limiter = anyio.CapacityLimiter(max_threads)
        self.lease_ttl = lease_ttl
        self.max_branches = max_branches
        self.spread: spread.Spread | None = None
        """Distributed mode: how a fork's branches are dispatched (`runtime/spread.py`); None: run in the run."""

    async def run(
        self, claim: Claim, *, stopping: Callable[[], bool], redispatch: Redispatch, closing: bool = False
    ) -> ProcessStatus | None:
        """Run the claimed process until it suspends, ends, fails or must stop; return its status (None: lost).
        `closing`: the claim was handed over by the last branch of the fork in flight, which joins from its rows (or
        the fork was closed and its holder died before joining: `claim.closing`)."""
        run = _Run(self, claim, stopping, redispatch)
        run.closing = closing or claim.closing
        log = logger.bind(process_id=str(claim.pid), workflow=claim.workflow_name)
        try:
            # Lines logged during the run by layers that know no process (the DSL's "step failed", the steps'
            # own) carry its id too.
            with structlog.contextvars.bound_contextvars(process_id=str(claim.pid)):
                status = await run.execute()
        except ClaimLostError:
            log.warning("claim lost: another runner owns the process now, or it was aborted; this run stops")
            return None
        log.info("run ended", status=status.value)
        return status

    async def run_branch(self, claim: Claim, *, stopping: Callable[[], bool], owner: str) -> Claim | None:
        """Run the branch `claim` holds (distributed mode); stop it, or park it when it stopped before a step.
        Return the claim of its process when this was the fork's last open branch: the caller runs it on."""
        run = _Run(self, claim, stopping, _no_redispatch)
        run.owner = owner
        log = logger.bind(process_id=str(claim.pid), branch=claim.branch)
        wf = self.registry.get(claim.workflow_name)
        if wf is None:
            log.error("unknown workflow: branch left for a worker that has it", workflow=claim.workflow_name)
            await self.store.branch_claims.park(claim, paused=False)
            return None
        try:
            with structlog.contextvars.bound_contextvars(process_id=str(claim.pid)):
                outcome = await spread.run_claimed_branch(run, wf)
        except ClaimLostError:
            log.warning("branch claim lost: taken over, or the process was aborted; this run stops")
            return None
        if outcome is None:
            await self.store.branch_claims.park(claim, paused=run.locked)
            return None
        if run.stopped:  # its last write stopped the branch
            return (
                None if run.joined_token is None else await self.store.branch_claims.load(claim.pid, run.joined_token)
            )
        return await self.store.branch_claims.stop(claim, owner=owner, lease_ttl=self.lease_ttl)


async def _no_redispatch(tx: Transaction, ref: ProcessRef) -> None:
    """A branch run never yields its process (a branch parks instead)."""


class _Run:
    """One run of one process (the engine's per-run state)."""

    def __init__(self, engine: Engine, claim: Claim, stopping: Callable[[], bool], redispatch: Redispatch) -> None:
        self.engine = engine
        self.store = engine.store
        self.claim = claim
        self.stopping = stopping
        self.redispatch = redispatch
        self.user = claim.run_by
        self.locked = False
        self.closing = False
        """The fork in flight is to be joined from its rows (its branches ran on other workers)."""
        self.fence = claim.branch
        """Distributed mode: the branch whose row (and token) fences this run's writes; None: the process row."""
        self.owner: str | None = None
        """Distributed mode: the runner that gets the process when this branch is its fork's last to stop..."""
        self.stopped = False
        """...whether a write of this run stopped its branch..."""
        self.joined_token: int | None = None
        """...and if that made the process this runner's, its new token."""
        self.branch: str | None = None
        """The branch this run writes rows for (runtime/branches.py); None for the workflow's own steps."""
        self.pending: State | None = None
        """A user input held for the branch it resumes (a resume of a process waiting inside a fork)..."""
        self.resume_path: str | None = None
        """...the first branch waiting for input, in branch order."""
        self.logger = logger.bind(process_id=str(claim.pid))
        self.rows: list[StepRow] = []
        self.inflight: list[StepRow] = []
        self.deferred: list[tuple[StepOutcome, bool]] = []
        """Outcomes not written yet, to be written with the next one (and whether each is a built-in step's)."""
        self.last: LastRow | None = None
        self._scope(*branches.scope(claim.rows, None))

    def _scope(self, own: list[StepRow], inflight: list[StepRow]) -> None:
        """Take this run's own step rows, and the rows of the branches of a fork still in flight."""
        self.rows = own
        self.inflight = inflight
        last = own[-1] if own else None
        self.last = (
            LastRow(last.stepid, last.name, last.status, last.created_by, last.state, last.completed_at)
            if last
            else None
        )

    # --- StepContext ----------------------------------------------------------------------------------------

    async def run_sync(self, func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        return await anyio.to_thread.run_sync(partial(func, **kwargs), limiter=self.engine.limiter)

    async def log(self, name: str, result: Process) -> Process:
        return await self._write(name, result, Assignee.SYSTEM)

    async def run_fork(self, fork: Fork, state: State) -> Process:
        if self.engine.spread is not None and self.branch is None:
            return await spread.spread_fork(self, fork, state, self.engine.spread)
        return await branches.run_fork(self, fork, state)

    def branch_run(self, path: str, own: list[StepRow], inflight: list[StepRow]) -> _Run:
        """A run of one branch of a fork: this run's claim, the branch's own rows."""
        run = copy.copy(self)
        run.branch, run.pending, run.locked, run.deferred = path, self.pending, False, []
        run._scope(own, inflight)
        return run

    # --- the run ----------------------------------------------------------------------------------------------

    async def execute(self) -> ProcessStatus:
        wf = self.engine.registry.get(self.claim.workflow_name)
        if wf is None:
            return await self._fail_unknown_workflow()
        start, remaining = await self._reload(wf)
        result = await self.run_steps(start, remaining)
        if result is None:
            return await self._yield(redispatch=not self.locked)
        if isinstance(result, branches.Unjoined):
            return await branches.settle(self, result)
        if isinstance(result, spread.Detached):
            return ProcessStatus.RUNNING
        if result.runs_next:
            # orchestrator-core leaves such a process `running` for ever; a run that ran out of steps has ended.
            self.logger.warning("workflow has no `done` step; the process is marked completed", workflow=wf.name)
            async with self.store.transaction() as tx:
                if (
                    await self.store.finish(
                        tx, pid=self.claim.pid, token=self.claim.token, status=ProcessStatus.COMPLETED
                    )
                    is None
                ):
                    raise ClaimLostError(self.claim.pid)
            return ProcessStatus.COMPLETED
        return self._status_of(result)

    async def run_steps(self, result: Process, remaining: StepList) -> Process | None:
        """Run `remaining` from `result` until one does not let the next run; None when stopped before a step."""
        for index, step in enumerate(remaining):
            if self.locked or self.stopping():
                await self._flush()
                return None
            if step.fork is not None or step.sub_steps:  # they write rows of their own while they run
                await self._flush()
            state = {**result.state, LAST_STEP_STARTED_AT: time.time()}
            try:
                result = await step(state, self)
            except ClaimLostError:
                raise
            except Exception as exc:  # a wrapper or built-in step failing: same as a failing step
                result = Failed(error_state(exc), exc)
            if isinstance(result, branches.Unjoined | spread.Detached):  # the fork writes no row (yet)
                return result
            result, wake = next_wake(step, result, self.last)
            ends = self._ends_branch and (not result.runs_next or step is remaining[-1])
            after = remaining[index + 1] if index + 1 < len(remaining) else None
            defer = wake is None and not ends and result.runs_next and self._may_defer(step, after)
            result = await self._write(step.name, result, step.assignee, wake, stop=ends, defer=defer, pure=step.pure)
            if not result.runs_next:
                return result
        return result

    async def _reload(self, wf: Workflow) -> tuple[Process, StepList]:
        """Current result and remaining steps, from the step log (positional, as orchestrator-core)."""
        rows = self.rows
        cleared = [row for row in rows if row.cleared]
        remaining = wf.steps[len(cleared) :]
        pending = self.claim.pending_input
        if self.inflight and remaining and remaining[0].fork is not None:
            self.pending, pending = pending, None  # the input resumes a branch of the fork in flight
        if not rows:
            state = self.initial_state(wf)
            return Success(deep_merge(state, pending) if pending else state), remaining
        last = rows[-1]
        if last.status in (StepStatus.COMPLETE, StepStatus.ABORT):
            return from_step_status(last.status, last.state), StepList()
        if last.status in (StepStatus.SUSPEND, StepStatus.AWAITING_CALLBACK):
            # Resuming a suspended or awaiting step: it is logged as a success with the merged input.
            merged = deep_merge(last.state, pending or {})
            in_group = STEP_GROUP in last.state
            # The input step's outcome is the stored state and the stored input: written with the next step's (a
            # crash before that finds the input pending again). A callback's answer is written at once.
            after = remaining[1] if len(remaining) > 1 else None
            defer = last.status == StepStatus.SUSPEND and not in_group and self._may_defer(None, after)
            result = await self._write(last.name, Success(merged), Assignee.SYSTEM, defer=defer, pure=True)
            return result, remaining if in_group else remaining[1:]
        base = cleared[-1].state if cleared else self.initial_state(wf)
        return Success(deep_merge(base, pending) if pending else dict(base)), remaining

    def initial_state(self, wf: Workflow) -> State:
        state = dict(self.claim.initial_state or {})
        defaults = dict(
            zip(
                ENGINE_KEYS,
                (str(self.claim.pid), self.claim.created_by or self.user, wf.name, wf.target.value),
                strict=True,
            )
        )
        return {**defaults, **state}

    def _may_defer(self, step: Step | None, after: Step | None) -> bool:
        """Whether the outcome of `step` (None: a resumed input step's) may wait to be written with the next one.
        Every step with user code has its outcome committed before the next step with user code runs: an outcome
        waits only while the steps that run meanwhile are built-in ones (`Step.pure`: no side effect, the same
        outcome if run again after a crash), or when it is a built-in step's own (or an input's) and no user step's
        outcome waits with it. Not in branches (their rows are fenced and settled on their own)."""
        if self.branch is not None or self.fence is not None:
            return False
        if after is not None and after.pure:
            return True
        own_is_pure = step is None or step.pure
        return own_is_pure and after is not None and all(pure for _, pure in self.deferred)

    @property
    def _ends_branch(self) -> bool:
        """This run is a claimed branch's own (not a nested branch's): its final outcome stops the branch."""
        return self.fence is not None and self.branch == self.fence

    def _status_of(self, result: Process) -> ProcessStatus:
        return self._classify(result)[0]

    def _classify(self, result: Process, step_assignee: str = Assignee.SYSTEM) -> tuple[ProcessStatus, str]:
        if isinstance(result, Failed) and self.claim.is_task:
            if is_inconsistent_data(result.exception):
                return ProcessStatus.INCONSISTENT_DATA, Assignee.NOC
            if is_api_unavailable(result.exception):
                return ProcessStatus.API_UNAVAILABLE, Assignee.SYSTEM
            return ProcessStatus.FAILED, Assignee.SYSTEM
        return result.process_status, str(step_assignee)

    async def _write(
        self,
        name: str,
        result: Process,
        assignee: str,
        wake: Wake | None = None,
        *,
        stop: bool = False,
        defer: bool = False,
        pure: bool = False,
    ) -> Process:
        """Persist a step outcome (one statement, with the timer `wake` sets, and the outcomes deferred before it);
        return the result carrying the state as stored. `stop`: the outcome ends this run's branch (distributed
        mode). `defer`: keep it to be written with the next outcome (`_may_defer`); `pure`: it is a built-in
        step's (or a resumed input step's), which runs no user code."""
        try:
            outcome, stored = self._outcome(name, result, assignee, wake, stop=stop)
        except (TypeError, ValueError) as exc:  # a state that cannot be stored fails the step instead
            self.logger.warning("step result could not be stored", step=name, error=str(exc))
            return await self._write_once(name, Failed(error_state(exc), exc), assignee, stop=self._ends_branch)
        if defer:
            self.deferred.append((outcome, pure))
            return stored
        written = await self._commit(outcome)
        return stored if written is None else written

    async def _flush(self) -> None:
        """Write the deferred outcomes now (before a stop, or a step that writes rows of its own)."""
        if self.deferred:
            last, _ = self.deferred.pop()
            await self._commit(last)

    async def _commit(self, outcome: StepOutcome) -> Process | None:
        """Write the deferred outcomes and `outcome` in one statement. None: written; a Failed result: one of
        them could not be stored (found by writing them one at a time), and that step failed instead."""
        batch = [o for o, _ in self.deferred] + [outcome]
        self.deferred = []
        try:
            await self._store(*batch)
            return None
        except (TypeError, ValueError) as exc:
            if len(batch) == 1:
                return await self._failed_instead(outcome, exc)
        for one in batch:  # find the one that cannot be stored; those before it are written
            try:
                await self._store(one)
            except (TypeError, ValueError) as exc:
                return await self._failed_instead(one, exc)
        return None

    async def _failed_instead(self, outcome: StepOutcome, exc: Exception) -> Process:
        """A state that cannot be stored fails its step instead."""
        self.logger.warning("step result could not be stored", step=outcome.step_name, error=str(exc))
        return await self._write_once(
            outcome.step_name, Failed(error_state(exc), exc), outcome.assignee, stop=self._ends_branch
        )

    async def _store(self, *outcomes: StepOutcome) -> None:
        written = await self.store.steps.write(*outcomes)
        if not written.accepted:
            raise ClaimLostError(self.claim.pid)
        self.locked = written.engine_locked
        self.stopped = self.stopped or outcomes[-1].stop
        self.joined_token = written.joined_token

    async def _write_once(
        self, name: str, result: Process, assignee: str, wake: Wake | None = None, *, stop: bool = False
    ) -> Process:
        """Write an outcome with the deferred ones, without looking for one that cannot be stored."""
        outcome, stored = self._outcome(name, result, assignee, wake, stop=stop)
        batch = [o for o, _ in self.deferred] + [outcome]
        self.deferred = []
        await self._store(*batch)
        return stored

    def _outcome(
        self, name: str, result: Process, assignee: str, wake: Wake | None = None, *, stop: bool = False
    ) -> tuple[StepOutcome, Process]:
        """The outcome to write for a step's result, and the result carrying the state as it will be stored; the
        run remembers it as its last row."""
        state = dict(result.state)
        name = state.pop(STEP_NAME_OVERRIDE, name)
        replace = bool(state.pop(REPLACE_LAST_STATE, False))
        started = state.pop(LAST_STEP_STARTED_AT, None)
        state = strip_removed_keys(state)
        failed_reason = traceback = None
        if result.failed:
            tb = state.pop("traceback", None)
            traceback = tb[-TRACEBACK_LIMIT:] if isinstance(tb, str) else None
            failed_reason = str(state.get("error", ""))[:FAILED_REASON_LIMIT]
        state = jsonutil.normalise(state)
        status = result.step_status.value
        replace_id = None
        if replace and self.last is not None:
            replace_id = self.last.stepid
        elif result.failed and self._same_failure(name, status, state):
            assert self.last is not None
            replace_id = self.last.stepid
            previous = self.last.state
            done_at = previous.get("executed_at") or ([self.last.completed_at] if self.last.completed_at else [])
            state = {**state, "retries": int(previous.get("retries", 0)) + 1, "executed_at": done_at}
        process_status, row_assignee = self._classify(result, assignee)
        if self.branch is not None:  # siblings run on: the fork settles the process once none can
            process_status, failed_reason, traceback = ProcessStatus.RUNNING, None, None
        outcome = StepOutcome(
            pid=self.claim.pid,
            token=self.claim.token,
            process_status=process_status.value,
            step_name=name,
            assignee=row_assignee,
            failed_reason=failed_reason,
            traceback=traceback,
            step_status=status,
            state=state,
            created_by=self.user,
            started_at=datetime.fromtimestamp(started, UTC) if isinstance(started, float) else None,
            replace_stepid=replace_id,
            stepid=replace_id or time_ordered_uuid(),
            branch=self.branch,
            fence=self.fence,
            stop=stop,
            owner=self.owner,
            lease_ttl=self.engine.lease_ttl,
            wake_at=wake.at if wake else None,
            timer_kind=wake.kind if wake else None,
            attempt=wake.attempt if wake else 0,
        )
        self.last = LastRow(outcome.stepid, name, status, self.user, state, None)
        return outcome, type(result)(state, result.exception)

    def _same_failure(self, name: str, status: str, state: State) -> bool:
        last = self.last
        return (
            last is not None
            and last.status == status
            and last.name == name
            and last.created_by == self.user
            and last.state.get("error") == state.get("error")
            and last.state.get("details") == state.get("details")
        )

    async def _yield(self, *, redispatch: bool) -> ProcessStatus:
        """Stop before the next step (pause or shutdown): leave the process `resumed`, dispatched again."""
        async with self.store.transaction() as tx:
            ref = await self.store.finish(tx, pid=self.claim.pid, token=self.claim.token, status=ProcessStatus.RESUMED)
            if ref is None:
                raise ClaimLostError(self.claim.pid)
            if redispatch:
                await self.redispatch(tx, ref)
        self.logger.info("run stopped before the next step", reason="engine paused" if self.locked else "shutdown")
        return ProcessStatus.RESUMED

    async def _fail_unknown_workflow(self) -> ProcessStatus:
        error = f"Workflow {self.claim.workflow_name!r} is not registered in this program (check WORKFLOW_MODULES)"
        self.logger.error("unknown workflow", workflow=self.claim.workflow_name)
        exc = LookupError(error)
        await self._write_once(
            self.claim.workflow_name, Failed({"class": "LookupError", "error": error}, exc), Assignee.SYSTEM
        )
        return ProcessStatus.FAILED


__all__ = ["Engine", "Step"]
