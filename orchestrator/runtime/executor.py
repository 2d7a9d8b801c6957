"""The one executor interface. Nothing outside the executors knows which mode runs.

`create`, `start` and `resume` are called inside the transaction that creates or resumes the process, so the
status change and its dispatch commit together (no dual write): the threadpool executor queues in memory once the
transaction has committed (and, with a slot free, inserts the process already claimed, saving the claim's commit);
the Dramatiq executor writes an outbox row in that very transaction.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.persistence.store import NewProcess, ProcessRef, Transaction


class Executor(Protocol):
    kind: str

    async def create(self, tx: Transaction, process: NewProcess) -> bool:
        """Insert a new process and dispatch its first run (the insert is the transaction's last statement);
        False, and nothing written, if the engine is paused."""

    async def start(self, tx: Transaction, process: ProcessRef) -> None:
        """Dispatch a `created` process for its first run."""

    async def resume(self, tx: Transaction, process: ProcessRef) -> None:
        """Dispatch a `resumed` process to continue."""

    async def open(self) -> None:
        """Start background work (runners, relays, sweepers)."""

    async def close(self) -> None:
        """Stop gracefully: running steps finish, processes are left resumable."""
