"""Example workflows: what an orchestrator-core workflow module looks like after changing its imports.

`orchestrator run` starts `provision_port` end to end, answering its approval form.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated
from uuid import UUID

from pydantic import Field

from orchestrator import (
    FormPage,
    State,
    StepList,
    Target,
    begin,
    done,
    init,
    inputstep,
    map_parallel,
    parallel,
    step,
    workflow,
)


class PortForm(FormPage):
    customer: str
    speed_gbps: Annotated[int, Field(ge=1, le=400)] = 10


def initial_form() -> type[PortForm]:
    return PortForm


@step("Create port")
async def create_port(customer: str, speed_gbps: int, process_id: UUID) -> State:
    await asyncio.sleep(0)  # an async step runs on the event loop
    return {"port_id": f"port-{str(process_id)[:8]}", "port": {"customer": customer, "speed_gbps": speed_gbps}}


class ApprovalForm(FormPage):
    approved: bool
    comment: str = ""


@inputstep("Ask approval", assignee="NOC")
def ask_approval(port_id: str) -> type[ApprovalForm]:
    return ApprovalForm


@step("Provision")
def provision(port_id: str, approved: bool) -> State:
    # A sync step runs in the bounded thread pool, never on the event loop.
    if not approved:
        raise ValueError(f"{port_id} was not approved")
    return {"provisioned": True}


@workflow("Provision a port", initial_input_form=initial_form, target=Target.CREATE)
def provision_port() -> StepList:
    return begin >> init >> create_port >> ask_approval >> provision >> done


@step("One")
async def one() -> State:
    return {"one": 1}


@step("Two")
async def two() -> State:
    return {"two": 2}


@step("Three")
async def three() -> State:
    return {"three": 3}


@workflow("Three no-op steps (benchmarks)", target=Target.SYSTEM)
def three_steps() -> StepList:
    return init >> one >> two >> three >> done


@workflow("Three no-op steps as a task (benchmarks)", target=Target.SYSTEM, is_task=True)
def task_three_steps() -> StepList:
    return init >> one >> two >> three >> done


class NoteForm(FormPage):
    note: str = ""


@inputstep("Wait for input")
def wait_for_input() -> type[NoteForm]:
    return NoteForm


@workflow("Three steps with an input step (benchmarks)", target=Target.SYSTEM)
def three_steps_with_input() -> StepList:
    return init >> one >> wait_for_input >> two >> three >> done


@step("Reserve VLAN")
async def reserve_vlan(port_id: str) -> State:
    return {"vlan": 100}


@step("Update inventory")
def update_inventory(port_id: str) -> State:
    return {"inventory": "updated"}


@step("Configure site")
async def configure_site(item: str, item_index: int) -> State:
    await asyncio.sleep(0)  # each site is configured concurrently with the others
    return {"site": item, "configured": True, "position": item_index}


@workflow("Provision a port on several sites in parallel", initial_input_form=initial_form, target=Target.CREATE)
def provision_port_parallel() -> StepList:
    """Fan out twice: two independent preparations, then one branch per site; each joins before `Done`."""
    return (
        begin
        >> init
        >> create_port
        >> parallel("Prepare", reserve_vlan, update_inventory)
        >> map_parallel("Configure sites", lambda state: ["ams", "fra", "lon"], configure_site, result_key="sites")
        >> done
    )


@step("Branch step")
async def branch_step(item_index: int) -> State:
    return {"done": item_index}


class FanOutForm(FormPage):
    branches: Annotated[int, Field(ge=0)] = 10


@workflow("One fork of one-step branches (benchmarks)", initial_input_form=lambda: FanOutForm, target=Target.SYSTEM)
def fan_out() -> StepList:
    """`branches` one-step branches, joined under `results`."""
    return (
        init
        >> map_parallel("Fan out", lambda state: list(range(state["branches"])), branch_step, result_key="results")
        >> done
    )


class SleepingForm(FormPage):
    branches: Annotated[int, Field(ge=0)] = 2
    seconds: Annotated[float, Field(ge=0)] = 1.0


@step("Sleep")
def sleep_branch(item: float) -> State:
    time.sleep(item)  # a sync step: it holds a thread of the engine's pool (in distributed mode, of a worker)
    return {"slept": item, "os_pid": os.getpid()}


@workflow("Sleeping branches (benchmarks)", initial_input_form=lambda: SleepingForm, target=Target.SYSTEM)
def fan_out_sleeping() -> StepList:
    """`branches` branches that each sleep `seconds`; `results` says which OS process ran each (benchmarks)."""
    return (
        init
        >> map_parallel(
            "Sleep", lambda state: [state["seconds"]] * state["branches"], sleep_branch, result_key="results"
        )
        >> done
    )
