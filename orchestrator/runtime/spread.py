"""Distributed mode: a workflow's fork spread over the workers, its branches dispatched in batches of messages.

The run that reaches the fork applies a resume to its branch, then dispatches every branch that has a step left to
run and lets the process go, still `running`, in one statement: the branch rows, the first batch claimed for the
worker that reached the fork (which runs it at once) and the other batches as outbox messages
(`dramatiq_executor.batches`). A worker that gets a branch message claims the message's branches it has slots for
(`persistence/branch_claims.py`) and runs each like any branch, each row fenced by the branch's token.
When the fork's last open branch stops, PostgreSQL hands the process to that worker by
compare-and-set, and it runs on from the fork: the branches' rows are their outcomes (`branches.replay`), so it
joins (or settles at the first failing or waiting branch) exactly as in threadpool mode. Nested forks run inside
the worker of their top-level branch (design: docs/parallel.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from orchestrator.dsl.parallel import Fork
from orchestrator.dsl.results import AwaitingCallback, Failed, Process, Suspend
from orchestrator.dsl.state import LAST_STEP_STARTED_AT
from orchestrator.dsl.types import State
from orchestrator.dsl.workflow import Workflow
from orchestrator.exceptions import ClaimLostError
from orchestrator.persistence.records import Claim
from orchestrator.runtime.branches import ForkRun, by_child, prepare, reload, replay, run_branch, scope

Spread = Callable[[Claim, Sequence[str]], Awaitable[bool]]
"""Dispatch these branches of the claimed process and let it go; False when the claim was lost."""


@dataclass(frozen=True)
class Detached(Process):
    """Not a step's outcome: the fork's branches were dispatched and the process let go, still `running`."""


async def spread_fork(parent: ForkRun, fork: Fork, state: State, spread: Spread) -> Process:
    """Dispatch the branches with a step left to run, or join (settle) at once when none has."""
    prepared = prepare(parent, fork, state)
    if isinstance(prepared, Failed):
        return prepared
    if parent.closing:  # the last branch stopped: join from the rows; a later fork is dispatched again
        parent.closing = False
        return prepared.join(fork, [await replay(run, br) for br, run in prepared.runs])
    outcomes: list[Process | None] = []
    dispatch = []
    for br, run in prepared.runs:
        start, remaining = await reload(run, br)  # applies a resume to its branch
        if remaining and not isinstance(start, Suspend | AwaitingCallback):
            assert run.branch is not None
            dispatch.append(run.branch)
        outcomes.append(start)
    if not dispatch:
        return prepared.join(fork, outcomes)
    if not await spread(parent.claim, dispatch):
        raise ClaimLostError(parent.claim.pid)
    return Detached(prepared.fork_state)


async def run_claimed_branch(run: ForkRun, wf: Workflow) -> Process | None:
    """Run the branch `run.claim` holds, from its rows; its outcome, or None when it stopped before a step."""
    path = run.claim.branch
    assert path is not None
    cleared = [row for row in run.rows if row.cleared]
    step = wf.steps[len(cleared)] if len(cleared) < len(wf.steps) else None
    if step is None or step.fork is None:  # the fork is no longer in flight: a stale claim
        raise ClaimLostError(run.claim.pid)
    base = cleared[-1].state if cleared else run.initial_state(wf)
    fork_state = {k: v for k, v in base.items() if k != LAST_STEP_STARTED_AT}
    br = step.fork.branch_labelled(fork_state, path)
    if br is None:
        raise ClaimLostError(run.claim.pid)
    branch = run.branch_run(path, *scope(by_child(run.inflight, None).get(path, []), path))
    outcome = await run_branch(branch, br)
    run.locked, run.stopped, run.joined_token = branch.locked, branch.stopped, branch.joined_token
    return outcome
