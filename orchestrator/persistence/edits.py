"""Edits made outside a run: a callback's payload or progress written into the awaiting step, a process's note.

Neither changes where a process stands, so neither is fenced by a claim; the caller publishes the live-update event.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from orchestrator.dsl.types import State
from orchestrator.persistence.store import Transaction


async def set_step_state(tx: Transaction, stepid: UUID, state: State) -> None:
    """Replace a step row's state in place (the awaiting step of a process waiting for a callback)."""
    await tx.conn.execute("UPDATE process_steps SET state = $2 WHERE stepid = $1", stepid, state)


async def set_note(pool: asyncpg.Pool, pid: UUID, note: str | None) -> bool:
    """Change a process's note, bumping `last_modified_at` so that listings' ETags change; False if not found."""
    result = await pool.execute("UPDATE processes SET note = $2, last_modified_at = now() WHERE pid = $1", pid, note)
    return bool(result != "UPDATE 0")
