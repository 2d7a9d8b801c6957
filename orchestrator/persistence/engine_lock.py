"""The engine lock (`engine_settings.global_lock`): while it is set no process starts, is claimed or runs a next
step. The statements that start or claim a process check it themselves; these read and set it."""

from __future__ import annotations

from orchestrator.persistence.statements import Statements
from orchestrator.persistence.transaction import Transaction


class EngineLockStatements(Statements):
    async def engine_locked(self) -> bool:
        return bool(await self.pool.fetchval("SELECT coalesce(bool_or(global_lock), false) FROM engine_settings"))

    async def set_engine_lock(self, tx: Transaction, locked: bool) -> bool:
        """Set the lock; return its previous value."""
        previous = await tx.conn.fetchval("SELECT global_lock FROM engine_settings FOR UPDATE")
        await tx.conn.execute("UPDATE engine_settings SET global_lock = $1", locked)
        tx.on_commit(lambda: self.events.publish({"engine": True}))
        return bool(previous)

    async def running_count(self) -> int:
        """Processes running under a live lease: a paused engine is `PAUSING` until none is left."""
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM processes WHERE last_status = 'running' AND lease_expires_at > now()"
            )
        )
