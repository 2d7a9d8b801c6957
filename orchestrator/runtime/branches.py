"""Running a fork's branches inside the run of their process, joining them, or settling a fork that cannot join.

Each branch is a run of its own steps with its own step rows (`process_steps.branch`), reloaded positionally like
a process: what it cleared is done, a waiting step waits, a failed step runs again. The branches are concurrent
tasks of the process's run, so every row they write is fenced by the process's token (design: docs/parallel.md).
"""

from __future__ import annotations

import asyncio
import traceback as tb
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from orchestrator.dsl.parallel import PATH_SEPARATOR, Branch, Fork, JoinConflictError
from orchestrator.dsl.results import AwaitingCallback, Failed, Process, Success, Suspend, Waiting, from_step_status
from orchestrator.dsl.state import (
    CALLBACK_RESULT_KEY,
    LAST_STEP_STARTED_AT,
    STEP_GROUP,
    deep_merge,
    error_state,
)
from orchestrator.dsl.steps import StepList
from orchestrator.dsl.types import Assignee, ProcessStatus, State, StepStatus
from orchestrator.dsl.workflow import Workflow
from orchestrator.exceptions import ClaimLostError
from orchestrator.persistence.records import Claim, StepRow
from orchestrator.persistence.store import Store
from orchestrator.runtime.retries import stored_wake

WAITING = (StepStatus.SUSPEND, StepStatus.AWAITING_CALLBACK)


class _Engine(Protocol):
    @property
    def store(self) -> Store: ...
    @property
    def max_branches(self) -> int: ...


class ForkRun(Protocol):
    """What a fork needs of the run it is a step of (the engine's `_Run`, or a branch's)."""

    @property
    def engine(self) -> _Engine: ...

    claim: Claim
    branch: str | None
    pending: State | None
    resume_path: str | None
    locked: bool
    closing: bool
    stopped: bool
    joined_token: int | None
    rows: list[StepRow]
    inflight: list[StepRow]
    last: Any

    def branch_run(self, path: str, own: list[StepRow], inflight: list[StepRow]) -> ForkRun: ...
    def initial_state(self, wf: Workflow) -> State: ...
    async def run_steps(self, result: Process, remaining: StepList) -> Process | None: ...
    async def _write(self, name: str, result: Process, assignee: str) -> Process: ...
    def _classify(self, result: Process, step_assignee: str = ...) -> tuple[ProcessStatus, str]: ...
    async def _yield(self, *, redispatch: bool) -> ProcessStatus: ...


@dataclass(frozen=True)
class Unjoined(Process):
    """Not a step's outcome: the fork cannot join yet. `outcome` is the first failing (else waiting) branch's
    result, at `step_name`; None when the branches stopped before their next step (pause, shutdown)."""

    outcome: Process | None = None
    step_name: str = ""
    assignee: str = Assignee.SYSTEM


def branch_path(parent: str | None, label: str) -> str:
    return label if parent is None else f"{parent}{PATH_SEPARATOR}{label}"


def scope(rows: Sequence[StepRow], path: str | None) -> tuple[list[StepRow], list[StepRow]]:
    """The rows of `path` itself, and the rows of its descendants' fork in flight (written after its last cleared
    row: the rows of a fork that already joined lie before its join row)."""
    own_at = [i for i, row in enumerate(rows) if row.branch == path]
    cleared_at = [i for i in own_at if rows[i].cleared]
    start = cleared_at[-1] + 1 if cleared_at else 0
    prefix = "" if path is None else f"{path}{PATH_SEPARATOR}"
    inflight = [
        row for row in rows[start:] if row.branch is not None and row.branch != path and row.branch.startswith(prefix)
    ]
    return [rows[i] for i in own_at], inflight


def by_child(inflight: Sequence[StepRow], parent: str | None) -> dict[str, list[StepRow]]:
    """The rows in flight grouped by the label of the parent's child branch they belong to."""
    skip = 0 if parent is None else len(parent) + len(PATH_SEPARATOR)
    grouped: dict[str, list[StepRow]] = defaultdict(list)
    for row in inflight:
        assert row.branch is not None
        grouped[row.branch[skip:].split(PATH_SEPARATOR, 1)[0]].append(row)
    return grouped


@dataclass(frozen=True)
class WaitingBranch:
    """A branch step that waits (for input or a callback): its path, the step and its row."""

    path: str
    step_index: int
    steps: StepList
    row: StepRow


def first_waiting(
    fork: Fork, state: State, inflight: Sequence[StepRow], parent: str | None, statuses: Sequence[str] = WAITING
) -> WaitingBranch | None:
    """The first branch, in branch order and depth first, whose last row waits in one of `statuses`."""
    try:
        expanded = fork.expand(state)
    except Exception:
        return None
    children = by_child(inflight, parent)
    for br in expanded:
        path = branch_path(parent, br.label)
        own, nested = scope(children.get(br.label, []), path)
        cleared = [row for row in own if row.cleared]
        if own and own[-1].status in statuses:
            return WaitingBranch(path, len(cleared), br.steps, own[-1])
        following = br.steps[len(cleared)] if len(cleared) < len(br.steps) else None
        if following is not None and following.fork is not None and nested:
            found = first_waiting(following.fork, cleared[-1].state if cleared else br.state, nested, path, statuses)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class Prepared:
    """A fork ready to run: the state it starts from and each branch with the run that writes its rows."""

    fork_state: State
    runs: list[tuple[Branch, ForkRun]]

    def join(self, fork: Fork, outcomes: Sequence[Process | None]) -> Process:
        return _join(fork, self.fork_state, [r for _, r in self.runs], [b.steps for b, _ in self.runs], outcomes)


def prepare(parent: ForkRun, fork: Fork, state: State) -> Prepared | Failed:
    """The fork's branches from `state`, each with its run scoped to its own rows; Failed when it cannot fork."""
    fork_state = {k: v for k, v in state.items() if k != LAST_STEP_STARTED_AT}
    try:
        expanded = fork.expand(fork_state)
    except Exception as exc:
        return Failed(error_state(exc), exc)
    limit = parent.engine.max_branches
    if len(expanded) > limit:
        too_many = ValueError(f"{fork.name!r} forks {len(expanded)} branches, more than MAX_BRANCHES={limit}; none ran")
        return Failed(error_state(too_many), too_many)
    if parent.pending is not None and parent.resume_path is None:
        waiting = first_waiting(fork, fork_state, parent.inflight, parent.branch, (StepStatus.SUSPEND,))
        parent.resume_path = waiting.path if waiting is not None else None
    children = by_child(parent.inflight, parent.branch)
    runs = []
    for br in expanded:
        path = branch_path(parent.branch, br.label)
        runs.append((br, parent.branch_run(path, *scope(children.get(br.label, []), path))))
    return Prepared(fork_state, runs)


async def run_fork(parent: ForkRun, fork: Fork, state: State) -> Process:
    """Run the fork's branches concurrently from `state`; the joined state, a failure, or Unjoined."""
    prepared = prepare(parent, fork, state)
    if isinstance(prepared, Failed):
        return prepared
    if parent.closing:  # the fork's branches ran elsewhere: their rows are their outcomes
        return prepared.join(fork, [await replay(run, br) for br, run in prepared.runs])
    slots = asyncio.Semaphore(fork.max_concurrency) if fork.max_concurrency else None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run_branch(run, br, slots)) for br, run in prepared.runs]
    except* ClaimLostError:  # aborted or taken over: every branch stops (the group cancelled the others)
        raise ClaimLostError(parent.claim.pid) from None
    parent.locked = parent.locked or any(run.locked for _, run in prepared.runs)
    return prepared.join(fork, [task.result() for task in tasks])


async def replay(run: ForkRun, br: Branch) -> Process | None:
    """A branch's outcome read from its rows, running nothing (a nested fork in flight is replayed too); None
    when it stopped before a step it still has to run."""
    own = run.rows
    cleared = [row for row in own if row.cleared]
    if own and not own[-1].cleared:
        return from_step_status(own[-1].status, own[-1].state)
    state = dict(cleared[-1].state) if cleared else br.state
    remaining = br.steps[len(cleared) :]
    if not remaining:
        return Success(state)
    if remaining[0].fork is not None and run.inflight:
        return await run_fork(run, remaining[0].fork, state)
    return None


async def run_branch(run: ForkRun, br: Branch, slots: asyncio.Semaphore | None = None) -> Process | None:
    guard: AbstractAsyncContextManager[Any] = slots if slots is not None else nullcontext()
    async with guard:
        start, remaining = await reload(run, br)
        if isinstance(start, Suspend | AwaitingCallback):
            return start
        return await run.run_steps(start, remaining)


async def reload(run: ForkRun, br: Branch) -> tuple[Process, StepList]:
    """A branch's current result and remaining steps from its own rows, as the engine reloads a process."""
    own = run.rows
    cleared = [row for row in own if row.cleared]
    remaining = br.steps[len(cleared) :]
    base: Process = Success(dict(cleared[-1].state) if cleared else br.state)
    if own and own[-1].cleared and own[-1].state.get(STEP_GROUP) == own[-1].name:
        return base, br.steps[len(cleared) - 1 :]  # a step group in progress: it runs on after its sub-step
    if own and own[-1].status == StepStatus.WAITING and not _due(own[-1].state):
        return from_step_status(own[-1].status, own[-1].state), StepList()  # its retry or sleep is not due yet
    if not own or own[-1].status not in WAITING:
        return base, remaining
    last = own[-1]
    if not _resumes(run, last):
        return from_step_status(last.status, last.state), StepList()
    pending = run.pending if last.status == StepStatus.SUSPEND else None
    result = await run._write(last.name, Success(deep_merge(last.state, pending or {})), Assignee.SYSTEM)
    return result, remaining if STEP_GROUP in last.state else remaining[1:]


def _due(state: State) -> bool:
    """A `waiting` branch row's timer has come (or it has none): the process's timer is its fork's earliest
    branch's, and the other waiting branches keep waiting until their own."""
    wake = stored_wake(state)
    return wake is None or wake.at <= datetime.now(UTC)


def _wake_at(unjoined: Unjoined) -> datetime:
    wake = stored_wake(unjoined.state)
    return wake.at if wake is not None else datetime.max.replace(tzinfo=UTC)


def _resumes(run: ForkRun, last: StepRow) -> bool:
    """A waiting branch runs on when the resume's input is for it, or its callback has answered."""
    if last.status == StepStatus.SUSPEND:
        return run.pending is not None and run.branch == run.resume_path
    return (last.state.get(CALLBACK_RESULT_KEY) or "callback_result") in last.state


def _join(
    fork: Fork,
    fork_state: State,
    runs: Sequence[ForkRun],
    branch_steps: Sequence[StepList],
    outcomes: Sequence[Process | None],
) -> Process:
    if any(o is None or (isinstance(o, Unjoined) and o.outcome is None) for o in outcomes):
        return Unjoined(fork_state)
    unjoined = [_unjoined(run, steps, o) for run, steps, o in zip(runs, branch_steps, outcomes, strict=True)]
    pending = [u for u in unjoined if u is not None]
    chosen = next((u for u in pending if u.outcome is not None and u.outcome.failed), None) or next(iter(pending), None)
    if chosen is not None and isinstance(chosen.outcome, Waiting):  # the process's timer: the earliest due branch's
        chosen = min((u for u in pending if isinstance(u.outcome, Waiting)), key=_wake_at)
    if chosen is not None:
        return chosen
    try:
        return Success(fork.join(fork_state, [o.state for o in outcomes if o is not None]))
    except JoinConflictError as exc:
        return Failed(error_state(exc), exc)


def _unjoined(run: ForkRun, steps: StepList, outcome: Process | None) -> Unjoined | None:
    if isinstance(outcome, Unjoined) or outcome is None:
        return outcome
    if not (outcome.failed or isinstance(outcome, Suspend | AwaitingCallback)):
        return None
    name = run.last.name if run.last is not None else ""
    assignee = next((s.assignee for s in steps if s.name == name), Assignee.SYSTEM)
    return Unjoined(outcome.state, outcome.exception, outcome=outcome, step_name=name, assignee=str(assignee))


async def settle(run: ForkRun, result: Unjoined) -> ProcessStatus:
    """Leave `running` for the status of the branch that stops the fork, or yield when the branches stopped."""
    if result.outcome is None:
        return await run._yield(redispatch=not run.locked)
    status, assignee = run._classify(result.outcome, result.assignee)
    reason = trace = None
    if result.outcome.failed:
        reason = str(result.outcome.state.get("error", ""))
        exc = result.outcome.exception
        trace = "".join(tb.format_exception(exc)) if exc is not None else None
    wake = stored_wake(result.outcome.state) if status is ProcessStatus.WAITING else None
    settled = await run.engine.store.settle_fork(
        pid=run.claim.pid,
        token=run.claim.token,
        status=status.value,
        step=result.step_name,
        assignee=assignee,
        failed_reason=reason,
        traceback=trace,
        wake_at=wake.at if wake else None,
        timer_kind=wake.kind if wake else None,
        attempt=wake.attempt if wake else 0,
    )
    if not settled:
        raise ClaimLostError(run.claim.pid)
    return status
