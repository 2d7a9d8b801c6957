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

from orchestrator import RetryPolicy, State, Target, done, init, map_parallel, parallel, step
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


@step("Nap")
def nap(item_index: int) -> State:
    time.sleep(1.0)
    return {"worker": os.getpid()}


DQ_PAIR = Workflow(
    name="dq_pair",
    steps=init >> map_parallel("Pair", lambda state: [0, 1], nap, result_key="naps") >> done,
    target=Target.CREATE,
)
"""Two branches sleeping 1 s each, recording the worker process they ran in."""


@step("Flaky")
async def flaky() -> State:
    if not Path(os.environ["DQ_GATE"]).exists():
        raise RuntimeError("flaky branch failed: the gate is closed")
    return {"flaky": "ok"}


DQ_FLAKY = Workflow(
    name="dq_flaky",
    steps=init >> parallel("Mixed", quick_branch, flaky >> after_gate) >> done,
    target=Target.CREATE,
)


@step("Numbered")
async def numbered(item_index: int) -> State:
    return {"n": item_index}


DQ_GATED_FAN = Workflow(
    name="dq_gated_fan",
    steps=init >> map_parallel("Fan", lambda state: [0, 1, 2], gated >> numbered, result_key="fanned") >> done,
    target=Target.CREATE,
)
"""Three branches held in their gated step until the test opens the gate."""


@step("Flaky once", retry=RetryPolicy(max_attempts=3, initial_interval=0.2))
def flaky_once() -> State:
    gate = Path(os.environ["DQ_GATE"])
    if not gate.exists():
        gate.touch()
        raise RuntimeError("the first attempt fails")
    return {"flaky": "ok"}


DQ_RETRYING = Workflow(
    name="dq_retrying",
    steps=init >> parallel("Retrying", quick_branch, flaky_once >> after_gate) >> done,
    target=Target.CREATE,
)
"""A branch whose first step fails once and has a retry policy (its second attempt passes: DQ_GATE is created)."""

REGISTRY = WorkflowRegistry({wf.name: wf for wf in (DQ_GATED, DQ_FORK, DQ_PAIR, DQ_FLAKY, DQ_GATED_FAN, DQ_RETRYING)})
