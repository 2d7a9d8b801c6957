"""What operators watch: workers and queues (from heartbeats and leases in PostgreSQL, never from the broker),
the metrics Prometheus scrapes, and whether the database answers."""

from __future__ import annotations

from typing import Any

from orchestrator.persistence import reads, stats
from orchestrator.persistence.database import ensure_reachable as ensure_database_reachable
from orchestrator.persistence.stats import MetricsSnapshot
from orchestrator.runtime.orchestrator import Orchestrator, current

__all__ = ["database_answers", "ensure_database_reachable", "metrics_snapshot", "queue_status", "worker_status"]


async def worker_status(*, orchestrator: Orchestrator | None = None) -> dict[str, Any]:
    """The executor type, workers online, processes queued and running (under a live lease)."""
    orch = orchestrator or current()
    counts = await stats.worker_counts(orch.store.pool, orch.settings.LEASE_TTL_SECONDS)
    executor_type = "threadpool" if orch.settings.EXECUTOR.value == "threadpool" else "dramatiq"
    return {
        "executor_type": executor_type,
        "number_of_workers_online": counts.online,
        "number_of_queued_jobs": counts.queued,
        "number_of_running_jobs": counts.running,
    }


def _empty() -> dict[str, int]:
    return {"workers_online": 0, "capacity": 0, "queued": 0, "running": 0}


async def queue_status(orch: Orchestrator) -> dict[str, dict[str, int]]:
    """Per Dramatiq queue: workers online and their capacity (from heartbeats), processes queued and running."""
    s = orch.settings
    queues = dict.fromkeys([s.WORKFLOWS_QUEUE, s.TASKS_QUEUE, *s.TARGET_QUEUES.values()])
    status = {q: _empty() for q in queues}
    for workers in await stats.queue_workers(orch.store.pool, s.LEASE_TTL_SECONDS):
        entry = status.setdefault(workers.queue, _empty())
        entry["workers_online"], entry["capacity"] = workers.online, workers.capacity
    for load in await stats.process_load(orch.store.pool):
        entry = status.setdefault(s.queue_for(is_task=load.is_task, target=load.target), _empty())
        entry["running" if load.running else "queued"] += load.count
    return status


async def metrics_snapshot(*, orchestrator: Orchestrator | None = None) -> MetricsSnapshot:
    """Process counts, the step-duration histogram (`STEP_SECONDS_BOUNDS`), and the load of the workers online."""
    orch = orchestrator or current()
    return await stats.metrics_snapshot(orch.store.pool, orch.settings.LEASE_TTL_SECONDS)


async def database_answers(*, orchestrator: Orchestrator | None = None) -> bool:
    """Does the database answer a query? Raises whatever stops it from answering."""
    orch = orchestrator or current()
    return await reads.database_answers(orch.store.pool)
