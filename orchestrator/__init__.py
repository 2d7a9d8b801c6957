"""An async-native workflow orchestrator with orchestrator-core's DSL, statuses, REST paths and Celery messages.

Port a workflow module written for orchestrator-core by changing its imports to this package.
"""

from orchestrator.app import Orchestrator
from orchestrator.forms import FormPage
from orchestrator.process import Abort as AbortResult
from orchestrator.services import (
    abort_process,
    delete_process,
    get_process,
    resume_process,
    start_process,
)
from orchestrator.settings import AppSettings
from orchestrator.steps import (
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
from orchestrator.types import Assignee, ProcessStatus, State, StepStatus, Target
from orchestrator.workflow import RunPredicateFail, RunPredicatePass, Workflow, workflow

__all__ = [
    "AbortResult",
    "AppSettings",
    "Assignee",
    "FormPage",
    "Orchestrator",
    "ProcessStatus",
    "RunPredicateFail",
    "RunPredicatePass",
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
    "resume_process",
    "retrystep",
    "start_process",
    "step",
    "step_group",
    "workflow",
]
