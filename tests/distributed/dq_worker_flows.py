"""WORKFLOW_MODULES entry for worker subprocesses: registers the distributed tests' workflows globally."""

from dq_flows import REGISTRY

from orchestrator.dsl.workflow import register

for _workflow in REGISTRY.values():
    register(_workflow)
