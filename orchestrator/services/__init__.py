"""The Python API for programs and for the HTTP layer: start, resume, abort and read processes.

Every function takes the `Orchestrator` to act on as `orchestrator=`; without it, the open one is used. The
types its functions take and raise are re-exported here, so that a caller needs no lower layer.
"""

from orchestrator.persistence.errors import DatabaseUnavailableError, ValueRefusedError
from orchestrator.persistence.pages import PageQuery
from orchestrator.persistence.reads import PROCESS_FIELDS, Condition, Kind, Order, ProcessListing, QueryError
from orchestrator.persistence.stats import MetricsSnapshot
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services.callbacks import continue_with_callback, report_callback_progress
from orchestrator.services.engine import (
    ENGINE_PAUSED,
    ENGINE_PAUSING,
    ENGINE_RUNNING,
    engine_status,
    resume_all,
    set_engine_lock,
)
from orchestrator.services.monitoring import (
    database_answers,
    ensure_database_reachable,
    metrics_snapshot,
    queue_status,
    worker_status,
)
from orchestrator.services.outcomes import wait_for_process
from orchestrator.services.processes import (
    ResumeAction,
    abort_process,
    delete_process,
    resume_action,
    resume_process,
    set_note,
    start_process,
)
from orchestrator.services.reads import (
    get_process,
    get_workflow,
    list_processes,
    list_workflows,
    process_page,
    process_summary,
    status_counts,
)
from orchestrator.services.retention import Pruned, prune
from orchestrator.services.schedules import (
    create_schedule,
    delete_schedule,
    get_schedule,
    list_schedules,
    update_schedule,
)

__all__ = [
    "ENGINE_PAUSED",
    "ENGINE_PAUSING",
    "ENGINE_RUNNING",
    "PROCESS_FIELDS",
    "Condition",
    "DatabaseUnavailableError",
    "Kind",
    "MetricsSnapshot",
    "Orchestrator",
    "Order",
    "PageQuery",
    "ProcessListing",
    "Pruned",
    "QueryError",
    "ResumeAction",
    "ValueRefusedError",
    "abort_process",
    "continue_with_callback",
    "create_schedule",
    "database_answers",
    "delete_process",
    "delete_schedule",
    "engine_status",
    "ensure_database_reachable",
    "get_process",
    "get_schedule",
    "get_workflow",
    "list_processes",
    "list_schedules",
    "list_workflows",
    "metrics_snapshot",
    "process_page",
    "process_summary",
    "prune",
    "queue_status",
    "report_callback_progress",
    "resume_action",
    "resume_all",
    "resume_process",
    "set_engine_lock",
    "set_note",
    "start_process",
    "status_counts",
    "update_schedule",
    "wait_for_process",
    "worker_status",
]
