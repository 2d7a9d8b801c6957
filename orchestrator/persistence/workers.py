"""The `workers` table: each runner's heartbeat, the source of the worker status the API reports."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.persistence.statements import Statements

_HEARTBEAT = """
INSERT INTO workers (worker_id, kind, queues, hostname, os_pid, capacity, running)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (worker_id) DO UPDATE
   SET heartbeat_at = now(), running = EXCLUDED.running, capacity = EXCLUDED.capacity
"""


class WorkerStatements(Statements):
    async def heartbeat(
        self,
        *,
        worker_id: str,
        kind: str,
        queues: Sequence[str],
        hostname: str,
        os_pid: int,
        capacity: int,
        running: int,
    ) -> None:
        await self.pool.execute(_HEARTBEAT, worker_id, kind, list(queues), hostname, os_pid, capacity, running)

    async def remove_worker(self, worker_id: str) -> None:
        await self.pool.execute("DELETE FROM workers WHERE worker_id = $1", worker_id)
