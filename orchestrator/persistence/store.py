"""`Store`: the one handle on the database that the layers above hold.

Its statements live by topic in the modules of its bases (`processes.py`, `recovery.py`, `workers.py`,
`engine_lock.py`, `outbox.py`, `workflows.py`, `timers.py`, `schedules.py`); the writers that batch concurrent
requests into one statement (`steps`, `claims`, `creates`), the event publisher (`events`) and the shared LISTEN
connection (`listener`) are attributes. Writes of a run are fenced: they carry the fencing token of the claim and
are refused once another runner has claimed the process (or it was aborted).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import asyncpg

from orchestrator.persistence.branch_claims import BranchClaims
from orchestrator.persistence.branches import BranchStatements
from orchestrator.persistence.claims import Claims
from orchestrator.persistence.creates import ProcessCreator
from orchestrator.persistence.engine_lock import EngineLockStatements
from orchestrator.persistence.events import EventPublisher
from orchestrator.persistence.groupcommit import GroupCommit
from orchestrator.persistence.listener import Listener
from orchestrator.persistence.outbox import OutboxStatements
from orchestrator.persistence.processes import ProcessStatements
from orchestrator.persistence.recovery import RecoveryStatements
from orchestrator.persistence.resumes import ProcessResumer
from orchestrator.persistence.schedules import ScheduleStatements
from orchestrator.persistence.stepwriter import StepWriter
from orchestrator.persistence.timers import TimerStatements
from orchestrator.persistence.transaction import Transaction, open_transaction
from orchestrator.persistence.workers import WorkerStatements
from orchestrator.persistence.workflows import WorkflowStatements


class Store(
    ProcessStatements,
    RecoveryStatements,
    OutboxStatements,
    EngineLockStatements,
    WorkerStatements,
    WorkflowStatements,
    BranchStatements,
    TimerStatements,
    ScheduleStatements,
):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.events = EventPublisher(pool)
        self.listener = Listener(pool)
        """The program's one LISTEN connection, shared by its components (`listener.py`)."""
        self.steps = StepWriter(pool, self.events)
        self.claims = Claims(pool, self.events)
        self.branch_claims = BranchClaims(pool, self.events)
        self.creates = ProcessCreator(pool)
        self.resumes = ProcessResumer(pool)
        self.loads = GroupCommit(self._load_many)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """`async with store.transaction() as tx`: begins on its first statement, commits when the block returns."""
        return open_transaction(self.pool)
