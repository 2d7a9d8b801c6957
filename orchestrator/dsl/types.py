"""Shared value types: statuses, targets and the state dict.

Status spellings are orchestrator-core's, because they are stored in `processes.last_status` and
`process_steps.status` and read by operators' SQL and dashboards.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

State = dict[str, Any]
"""A process state: a JSON-compatible dict, normalised each time it is persisted."""

SYSTEM_USER = "SYSTEM"


class Target(StrEnum):
    CREATE = "CREATE"
    MODIFY = "MODIFY"
    TERMINATE = "TERMINATE"
    SYSTEM = "SYSTEM"
    VALIDATE = "VALIDATE"
    RECONCILE = "RECONCILE"


class Assignee(StrEnum):
    NOC = "NOC"
    SYSTEM = "SYSTEM"
    CHANGES = "CHANGES"
    KLANTSUPPORT = "KLANTSUPPORT"


class ProcessStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    SUSPENDED = "suspended"
    WAITING = "waiting"
    AWAITING_CALLBACK = "awaiting_callback"
    ABORTED = "aborted"
    FAILED = "failed"
    API_UNAVAILABLE = "api_unavailable"
    INCONSISTENT_DATA = "inconsistent_data"
    COMPLETED = "completed"
    RESUMED = "resumed"


class StepStatus(StrEnum):
    SUCCESS = "success"
    SKIPPED = "skipped"
    SUSPEND = "suspend"
    WAITING = "waiting"
    AWAITING_CALLBACK = "awaiting_callback"
    ABORT = "abort"
    FAILED = "failed"
    COMPLETE = "complete"


RESUMABLE_STATUSES = frozenset(
    {
        ProcessStatus.SUSPENDED,
        ProcessStatus.WAITING,
        ProcessStatus.AWAITING_CALLBACK,
        ProcessStatus.FAILED,
        ProcessStatus.API_UNAVAILABLE,
        ProcessStatus.INCONSISTENT_DATA,
        ProcessStatus.RESUMED,
    }
)
"""Statuses a user may resume (orchestrator-core's RESUMABLE_STATUSES)."""

FAILED_STATUSES = frozenset(
    {ProcessStatus.FAILED, ProcessStatus.WAITING, ProcessStatus.API_UNAVAILABLE, ProcessStatus.INCONSISTENT_DATA}
)
"""Statuses whose resume re-runs the failed step ("retry")."""

RUN_ENDED_STATUSES = frozenset(
    set(ProcessStatus) - {ProcessStatus.CREATED, ProcessStatus.RUNNING, ProcessStatus.RESUMED}
)
"""Statuses in which a run has ended (nothing executes until somebody acts)."""
