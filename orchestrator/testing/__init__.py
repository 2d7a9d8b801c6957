"""Helpers for testing workflows: run one to its next stop, then assert on the outcome and inspect it.

    result = await run_workflow("provision_port", [{"customer": "ACME"}])
    assert_suspended(result, form=ApprovalForm)
    result = await resume_workflow(result, [{"approved": True}])
    assert_complete(result)
    assert extract_state(result)["provisioned"]

The names are orchestrator-core's (`test/.../workflows/__init__.py`), so that its users' tests port with new
imports; the runs are real ones (forms, engine, database) through the open Orchestrator, which the
`clean_orchestrator` fixture of `orchestrator.testing.fixtures` provides on a clean database for each test.
This module does not import pytest.
"""

from __future__ import annotations

import difflib
import pprint
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.dsl.forms import FormPage, first_page_schema
from orchestrator.dsl.types import ProcessStatus, State, StepStatus
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services import resume_process, start_process, wait_for_process

TEST_USER = "john.doe"
"""The user runs and resumes are made as (orchestrator-core's tests use the same)."""

FAILED = frozenset({ProcessStatus.FAILED, ProcessStatus.API_UNAVAILABLE, ProcessStatus.INCONSISTENT_DATA})


@dataclass(frozen=True)
class StepLog:
    """A step that ran: its name, its step status (success, suspend, failed, ...) and the state it logged."""

    name: str
    status: str
    state: State


@dataclass(frozen=True)
class WorkflowResult:
    """A process where its run stopped, as read back from the database."""

    process_id: UUID
    workflow: str
    status: ProcessStatus
    state: State
    """The process's current state (for a failed process: the state the failed step was given)."""
    steps: list[StepLog]
    """The step rows logged, oldest first: an input step appears as `suspend`, then `success` once resumed."""
    form: dict[str, Any] | None
    """JSON schema of the form a suspended process asks for."""
    failed_reason: str | None
    traceback: str | None
    assignee: str

    @property
    def last_step(self) -> StepLog | None:
        return self.steps[-1] if self.steps else None

    def describe(self) -> str:
        """One line on where the process stands, then its steps: what a failing assertion shows."""
        last = self.last_step
        where = f"{self.status} at step {last.name!r}" if last is not None else str(self.status)
        if self.status in FAILED or self.status == ProcessStatus.WAITING:
            where += f": {self.failed_reason}"
        elif self.form is not None:
            where += f", asking for a form {_fields(self.form)}"
        lines = [f"process {self.process_id} ({self.workflow}) is {where}"]
        lines += [f"  {step.status:>17}  {step.name}" for step in self.steps]
        if self.traceback and self.status in FAILED | {ProcessStatus.WAITING}:
            lines += ["traceback of the failure:", self.traceback.rstrip()]
        return "\n".join(lines)


def _fields(schema: dict[str, Any]) -> str:
    return f"with fields {sorted(schema.get('properties', {}))}"


def _pages(input_data: State | list[State] | None) -> list[State] | None:
    """One dict or a list of pages, as orchestrator-core's `run_workflow` accepts."""
    return [input_data] if isinstance(input_data, dict) else input_data


async def _result(pid: UUID, orchestrator: Orchestrator | None, timeout: float) -> WorkflowResult:
    process = await wait_for_process(pid, timeout=timeout, orchestrator=orchestrator)
    return WorkflowResult(
        process_id=pid,
        workflow=process["workflow_name"],
        status=ProcessStatus(process["last_status"]),
        state=process["current_state"],
        steps=[StepLog(s["name"], s["status"], s["state"]) for s in process["steps"] if s["status"] != "pending"],
        form=process["form"],
        failed_reason=process["failed_reason"],
        traceback=process["traceback"],
        assignee=process["assignee"],
    )


async def run_workflow(
    workflow_key: str,
    input_data: State | list[State] | None = None,
    *,
    user: str = TEST_USER,
    timeout: float = 10.0,
    orchestrator: Orchestrator | None = None,
) -> WorkflowResult:
    """Start a process as `start_process` does (form validation included) and return it once its run stops."""
    pid = await start_process(workflow_key, _pages(input_data), user=user, orchestrator=orchestrator)
    return await _result(pid, orchestrator, timeout)


async def resume_workflow(
    process: WorkflowResult | UUID,
    input_data: State | list[State] | None = None,
    *,
    user: str = TEST_USER,
    timeout: float = 10.0,
    orchestrator: Orchestrator | None = None,
) -> WorkflowResult:
    """Resume (or retry) a process as `resume_process` does and return it once its run stops again."""
    pid = process.process_id if isinstance(process, WorkflowResult) else process
    await resume_process(pid, _pages(input_data), user=user, orchestrator=orchestrator)
    return await _result(pid, orchestrator, timeout)


def _assert_status(result: WorkflowResult, expected: Iterable[ProcessStatus]) -> None:
    wanted = frozenset(expected)
    if result.status not in wanted:
        names = " or ".join(sorted(wanted))
        raise AssertionError(f"Unexpected process status. Expected {names}, but {result.describe()}")


def assert_complete(result: WorkflowResult) -> None:
    _assert_status(result, [ProcessStatus.COMPLETED])


assert_success = assert_complete
"""orchestrator-core tells a run that ended without `done` (Success) from one that reached it (Complete); both
end `completed` here."""


def assert_suspended(result: WorkflowResult, form: type[FormPage] | None = None) -> dict[str, Any]:
    """Suspended at an input step; with `form`, asking for that form page. Returns the form's JSON schema."""
    _assert_status(result, [ProcessStatus.SUSPENDED])
    if result.form is None:  # its workflow is no longer registered
        raise AssertionError(f"Expected a form, but {result.describe()}")
    if form is not None:
        expected = first_page_schema(form, result.state) or {}
        if result.form != expected:
            raise AssertionError(
                f"Unexpected form. Expected {form.__name__} {_fields(expected)}, but {result.describe()}"
            )
    return result.form


def assert_waiting(result: WorkflowResult) -> None:
    """A retry step failed; the process waits to be retried."""
    _assert_status(result, [ProcessStatus.WAITING])


def assert_awaiting_callback(result: WorkflowResult) -> None:
    _assert_status(result, [ProcessStatus.AWAITING_CALLBACK])


def assert_aborted(result: WorkflowResult) -> None:
    _assert_status(result, [ProcessStatus.ABORTED])


def assert_failed(result: WorkflowResult, error: str | type[BaseException] | None = None) -> None:
    """Failed (for a task also api_unavailable or inconsistent_data); with `error`, with a failure whose message
    contains that text, or raised as that exception class (matched by name, as the error is stored)."""
    _assert_status(result, FAILED)
    if error is None:
        return
    failure = _failure(result)
    if isinstance(error, str):
        matched = error in str(failure.get("error", ""))
    else:
        matched = failure.get("class") == error.__name__
    if not matched:
        raise AssertionError(
            f"Unexpected error. Expected {getattr(error, '__name__', error)!r}, but {result.describe()}"
        )


def assert_state(result: WorkflowResult, expected: State) -> None:
    """The state holds these keys with these values (other keys may be there too)."""
    actual = {key: result.state.get(key, "<missing>") for key in expected}
    if actual != expected:
        raise AssertionError(f"Invalid state. Expected superset of: {expected}, but was: {actual}")


def assert_state_equal(result: WorkflowResult, expected: State, excluded_keys: list[str] | None = None) -> None:
    """The state is exactly `expected`, leaving out `excluded_keys` (by default the ones every process has)."""
    excluded = ["process_id", "workflow_target", "workflow_name"] if excluded_keys is None else excluded_keys
    state = {k: v for k, v in result.state.items() if k not in excluded}
    wanted = {k: v for k, v in expected.items() if k not in excluded}
    if state != wanted:
        diff = difflib.ndiff(pprint.pformat(state).splitlines(), pprint.pformat(wanted).splitlines())
        raise AssertionError("Unexpected state:\n" + "\n".join(diff))


def assert_step_name(result: WorkflowResult, expected: str) -> None:
    """The last step that ran is named `expected`."""
    actual = result.last_step.name if result.last_step is not None else None
    if actual != expected:
        raise AssertionError(f"Unexpected name. Expected {expected!r}, but was: {actual!r}")


def assert_assignee(result: WorkflowResult, expected: str) -> None:
    if result.assignee != expected:
        raise AssertionError(f"Unexpected assignee. Expected {expected}, but was: {result.assignee}")


def extract_state(result: WorkflowResult) -> State:
    return result.state


def _failure(result: WorkflowResult) -> State:
    last = result.last_step
    if last is None or last.status not in (StepStatus.FAILED, StepStatus.WAITING):
        raise AssertionError(f"Expected a failed step, but {result.describe()}")
    return last.state


def extract_error(result: WorkflowResult) -> str:
    """The message of the failure the process stopped on (failed or waiting)."""
    return str(_failure(result).get("error"))


def step_names(result: WorkflowResult) -> list[str]:
    """Names of the steps that ran, oldest first."""
    return [step.name for step in result.steps]
