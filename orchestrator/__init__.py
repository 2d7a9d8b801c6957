"""An async-native workflow orchestrator with orchestrator-core's DSL, statuses, REST paths and Celery messages.

Port a workflow module written for orchestrator-core by changing its imports to this package.

The DSL names are imported eagerly; the runtime and the Python API (`Orchestrator`, `start_process`,
`wait_for_process`, ...) on first use, so that a module of workflow definitions imports neither a database
driver nor a broker client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.dsl.forms import FormPage
from orchestrator.dsl.parallel import map_parallel, parallel
from orchestrator.dsl.results import Abort as AbortResult
from orchestrator.dsl.retry import RetryPolicy
from orchestrator.dsl.schedules import Cron, Interval, Once, Schedule
from orchestrator.dsl.sleep import sleep_step
from orchestrator.dsl.steps import (
    Step,
    StepList,
    abort,
    begin,
    callback_step,
    conditional,
    done,
    focussteps,
    init,
    inputstep,
    retrystep,
    step,
    step_group,
)
from orchestrator.dsl.types import Assignee, ProcessStatus, State, StepStatus, Target
from orchestrator.dsl.workflow import RunPredicateFail, RunPredicatePass, Workflow, workflow
from orchestrator.settings import AppSettings

if TYPE_CHECKING:
    from orchestrator.exceptions import ProcessWaitTimeoutError
    from orchestrator.runtime.orchestrator import Orchestrator
    from orchestrator.services import (
        abort_process,
        delete_process,
        get_process,
        resume_process,
        start_process,
        wait_for_process,
    )

_LAZY = {
    "Orchestrator": "orchestrator.runtime.orchestrator",
    "ProcessWaitTimeoutError": "orchestrator.exceptions",
    "abort_process": "orchestrator.services",
    "delete_process": "orchestrator.services",
    "get_process": "orchestrator.services",
    "resume_process": "orchestrator.services",
    "start_process": "orchestrator.services",
    "wait_for_process": "orchestrator.services",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


__all__ = [
    "AbortResult",
    "AppSettings",
    "Assignee",
    "Cron",
    "FormPage",
    "Interval",
    "Once",
    "Orchestrator",
    "ProcessStatus",
    "ProcessWaitTimeoutError",
    "RetryPolicy",
    "RunPredicateFail",
    "RunPredicatePass",
    "Schedule",
    "State",
    "Step",
    "StepList",
    "StepStatus",
    "Target",
    "Workflow",
    "abort",
    "abort_process",
    "begin",
    "callback_step",
    "conditional",
    "delete_process",
    "done",
    "focussteps",
    "get_process",
    "init",
    "inputstep",
    "map_parallel",
    "parallel",
    "resume_process",
    "retrystep",
    "sleep_step",
    "start_process",
    "step",
    "step_group",
    "wait_for_process",
    "workflow",
]
