"""orchestrator-core's API with the bench workflows (`uvicorn main:app`)."""

from orchestrator.core import OrchestratorCore
from orchestrator.core.settings import AppSettings
from orchestrator.core.workflows import ALL_WORKFLOWS, LazyWorkflowInstance
from ref_workflows import WORKFLOWS

app = OrchestratorCore(base_settings=AppSettings())
for _name in WORKFLOWS:
    ALL_WORKFLOWS[_name] = LazyWorkflowInstance("ref_workflows", _name)
