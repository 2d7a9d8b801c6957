"""What the store hands the layers above: plain frozen records of processes, claims and step rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.dsl.types import State, StepStatus

NOT_CLEARED = (StepStatus.FAILED, StepStatus.SUSPEND, StepStatus.WAITING, StepStatus.AWAITING_CALLBACK)
"""Step rows that do not count as a step done: the step runs again (retry, resume)."""


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
    branch: str | None = None
    """The branch of a `parallel`/`map_parallel` the row belongs to (a path of labels); None for the workflow's
    own steps."""

    @property
    def cleared(self) -> bool:
        return self.status not in NOT_CLEARED


def step_rows(raw: Sequence[dict[str, Any]] | None) -> list[StepRow]:
    """Step rows from their JSON aggregate (`steps` of `Store.load` and of a claim)."""
    return [
        StepRow(
            stepid=UUID(r["stepid"]),
            name=r["name"],
            status=r["status"],
            state=r["state"] or {},
            created_by=r.get("created_by"),
            completed_at=r.get("completed_at"),
            branch=r.get("branch"),
        )
        for r in raw or ()
    ]


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
    branch: str | None = None
    """Distributed mode: the branch of the process's fork in flight this claim holds (`process_branches`); its
    `token` is then the branch's fencing token, and its `rows` are the workflow's own and that branch's."""
    closing: bool = False
    """Distributed mode: the process's fork in flight is closed (every branch stopped) and not joined yet: its holder
    died before joining; this run joins (or settles) it from the branches' rows (`branch_claims.JOIN_WHEN_LAST`)."""


@dataclass(frozen=True)
class Lease:
    """A run slot reserved for a process about to be inserted: the process is inserted already claimed by `owner`
    (taken over after `ttl` seconds unless renewed), and `on_claimed` gets the claim once the insert has committed."""

    owner: str
    ttl: float
    on_claimed: Callable[[Claim], None]


@dataclass(frozen=True)
class Dispatch:
    """A process's first dispatch, written by the statement that inserts it: its outbox row (`outbox.py`) commits
    with the process in one round trip, instead of a transaction of its own statement plus BEGIN and COMMIT."""

    queue: str
    actor: str


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
