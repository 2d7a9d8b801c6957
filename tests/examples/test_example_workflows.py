"""Tests of the example workflows, written as a user writes tests of their own: `orchestrator.testing`'s helpers
and its `clean_orchestrator` fixture (a clean database per test), nothing of this repository's test plumbing."""

from __future__ import annotations

import pytest

from orchestrator.dsl.forms import FormValidationError
from orchestrator.examples.workflows import ApprovalForm, NoteForm
from orchestrator.testing import (
    assert_assignee,
    assert_complete,
    assert_failed,
    assert_state,
    assert_step_name,
    assert_suspended,
    extract_error,
    extract_state,
    resume_workflow,
    run_workflow,
    step_names,
)

pytestmark = pytest.mark.usefixtures("clean_orchestrator")


async def test_provision_port_waits_for_approval_then_provisions() -> None:
    result = await run_workflow("provision_port", {"customer": "ACME", "speed_gbps": 100})
    assert_suspended(result, form=ApprovalForm)
    assert_step_name(result, "Ask approval")
    assert_assignee(result, "NOC")
    assert_state(result, {"customer": "ACME", "port": {"customer": "ACME", "speed_gbps": 100}})

    result = await resume_workflow(result, {"approved": True, "comment": "go"})
    assert_complete(result)
    assert extract_state(result)["provisioned"] is True
    assert step_names(result) == ["Start", "Create port", "Ask approval", "Ask approval", "Provision", "Done"]


async def test_provision_port_fails_when_not_approved() -> None:
    result = await run_workflow("provision_port", {"customer": "ACME"})
    result = await resume_workflow(result, {"approved": False})
    assert_failed(result, ValueError)
    assert extract_error(result) == f"{extract_state(result)['port_id']} was not approved"
    assert_step_name(result, "Provision")


async def test_provision_port_refuses_a_speed_out_of_range() -> None:
    with pytest.raises(FormValidationError, match="speed_gbps"):
        await run_workflow("provision_port", {"customer": "ACME", "speed_gbps": 1000})


@pytest.mark.parametrize("workflow", ["three_steps", "task_three_steps"])
async def test_three_steps(workflow: str) -> None:
    result = await run_workflow(workflow)
    assert_complete(result)
    assert_state(result, {"one": 1, "two": 2, "three": 3})


async def test_three_steps_with_input_takes_a_note() -> None:
    result = await run_workflow("three_steps_with_input")
    assert_suspended(result, form=NoteForm)
    result = await resume_workflow(result, {"note": "hello"})
    assert_complete(result)
    assert_state(result, {"one": 1, "note": "hello", "three": 3})
