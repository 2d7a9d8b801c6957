"""The one executor interface: it dispatches processes. Nothing outside the executors knows which mode runs.

`start` and `resume` are called inside the transaction that creates or resumes the process, so the status change
and its dispatch commit together (no dual write): the threadpool executor queues in memory once the transaction
has committed; the Dramatiq executor writes an outbox row in that very transaction.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.persistence.records import Dispatch, Lease, ProcessRef
from orchestrator.persistence.transaction import Transaction


class Executor(Protocol):
    kind: str

    def reserve(self, tx: Transaction, process: ProcessRef) -> Lease | Dispatch | None:
        """What the statement inserting `process` in `tx` writes with it: a run slot, as the lease to insert it under
        already claimed (one commit less than a claim; released if `tx` rolls back), or its dispatch (the outbox row:
        two round trips less than `start`). None: insert it `created` and `start` it."""

    def lease_slot(self, tx: Transaction) -> Lease | None:
        """A run slot for a process that `tx` resumes, as the lease it is claimed under in the resume statement
        (released if `tx` rolls back). None: mark it `resumed` and `resume` it."""

    async def start(self, tx: Transaction, process: ProcessRef) -> None:
        """Dispatch a `created` process for its first run."""

    async def resume(self, tx: Transaction, process: ProcessRef) -> None:
        """Dispatch a `resumed` process to continue."""

    async def open(self) -> None:
        """Start background work (runners, relays, sweepers)."""

    async def close(self) -> None:
        """Stop gracefully: running steps finish, processes are left resumable."""
