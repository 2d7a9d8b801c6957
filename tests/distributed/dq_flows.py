"""Workflows of the distributed tests, built without registering them: the test process adds them to its own
API's registry only (`REGISTRY`), so other tests never see them; worker processes register them through
`dq_worker_flows` in WORKFLOW_MODULES.

The gated step waits for the file named by DQ_GATE (set per worker), so a test decides when it ends instead of
racing a sleep: it is still running when the test sends its signal or pauses the engine, then finishes on demand.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator import State, Target, done, init, parallel, step
from orchestrator.dsl.workflow import Workflow, WorkflowRegistry

GATE_TIMEOUT_SECONDS = 120.0


@step("Gated")
def gated() -> State:
    gate = Path(os.environ["DQ_GATE"])
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.05)
    return {"gated": True}


@step("After gate")
async def after_gate() -> State:
    return {"after_gate": True}


DQ_GATED = Workflow(name="dq_gated", steps=init >> gated >> after_gate >> done, target=Target.CREATE)


@step("Quick branch")
async def quick_branch() -> State:
    return {"quick": True}


DQ_FORK = Workflow(
    name="dq_fork", steps=init >> parallel("Fork", quick_branch, gated >> after_gate) >> done, target=Target.CREATE
)

REGISTRY = WorkflowRegistry({DQ_GATED.name: DQ_GATED, DQ_FORK.name: DQ_FORK})
