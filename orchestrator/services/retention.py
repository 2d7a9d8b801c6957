"""Retention: delete completed processes older than an age (`orchestrator db prune`, the built-in prune task)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.persistence.retention import Pruned
from orchestrator.runtime.orchestrator import Orchestrator, current
from orchestrator.runtime.retention import prune_completed

__all__ = ["Pruned", "prune"]


async def prune(
    older_than: timedelta, *, tasks_only: bool = False, dry_run: bool = False, orchestrator: Orchestrator | None = None
) -> Pruned:
    """Delete completed processes (with `tasks_only`, tasks) last changed more than `older_than` ago, in small
    batches that never block running processes; with `dry_run`, only count them. Returns what was (or would be)
    removed."""
    orch = orchestrator or current()
    return await prune_completed(orch.store.pool, older_than, tasks_only=tasks_only, dry_run=dry_run)
