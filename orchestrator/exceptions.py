"""The exception tree of the public API.

    OrchestratorError
    ├── SettingsError             a setting has an invalid value
    ├── WorkflowNotFoundError     no workflow registered under that key
    │   └── WorkflowNotLoadedError    the database knows the key, but this program did not import its module
    ├── ProcessNotFoundError      no process with that id
    ├── EngineLockedError         the engine is paused; starts and resumes are refused
    ├── StartPredicateError       the workflow's run predicate refused the start
    ├── ProcessStatusError        the process is not in a status that allows the action
    │   └── ClaimLostError        a runner lost its claim on a process (another runner owns it now)
    ├── ProcessWaitTimeoutError   `wait_for_process` gave up; the process goes on (also a TimeoutError)
    ├── NotAuthorizedError        the authorizer refused the action
    ├── InvalidWorkflowError      a workflow definition is malformed
    ├── ActionNotAllowedError     the action is not allowed for this process (delete a non-task)
    └── CallbackTokenError        a callback used the wrong token

Form errors are pydantic-forms' own (`FormValidationError`, `FormNotCompleteError`, `FormOverflowError`),
re-exported from `orchestrator.dsl.forms`.

Exceptions a step may raise to pick the failure status of a task (matched by type, not by class name):
`InconsistentDataError` (→ inconsistent_data), `ApiUnavailableError` (→ api_unavailable) and
`ProcessFailureError` (carries details into the error state).
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """Base class of every error the orchestrator raises on purpose."""


class SettingsError(OrchestratorError):
    """A setting has an invalid value; the message is one line naming the setting."""


class WorkflowNotFoundError(OrchestratorError):
    def __init__(self, key: str) -> None:
        super().__init__(f"Workflow does not exist: {key}")
        self.key = key


class WorkflowNotLoadedError(WorkflowNotFoundError):
    """The workflow is registered in the database (by another program), but its module is not imported here."""

    def __init__(self, key: str) -> None:
        OrchestratorError.__init__(
            self,
            f"Workflow {key!r} is registered but its module is not loaded in this program; "
            "load it with --workflows MODULE or WORKFLOW_MODULES",
        )
        self.key = key


class ProcessNotFoundError(OrchestratorError):
    def __init__(self, process_id: object) -> None:
        super().__init__(f"Process not found: {process_id}")
        self.process_id = process_id


class EngineLockedError(OrchestratorError):
    def __init__(self) -> None:
        super().__init__("Engine is locked cannot accept changes on processes at this time")


class StartPredicateError(OrchestratorError):
    """The workflow's run predicate refused the start; no process was created."""


class ProcessStatusError(OrchestratorError):
    """The process's status does not allow the action (resume a running process, start it twice, ...)."""


class ClaimLostError(ProcessStatusError):
    """The runner's claim on the process is gone (lease expired and taken over, or the process was aborted)."""


class ProcessWaitTimeoutError(OrchestratorError, TimeoutError):
    """`wait_for_process` timed out; the process itself is left alone. `status` is the last one seen (or None)."""

    def __init__(self, process_id: object, status: str | None, timeout: float) -> None:
        seen = f"it is {status}" if status is not None else "its status could not be read"
        super().__init__(f"Process {process_id} did not reach the awaited status within {timeout:g}s; {seen}")
        self.process_id = process_id
        self.status = status
        self.timeout = timeout


class NotAuthorizedError(OrchestratorError):
    pass


class InvalidWorkflowError(OrchestratorError):
    """A workflow definition is malformed (bad step list, duplicate key, ...)."""


class ScheduleError(OrchestratorError, ValueError):
    """A schedule that cannot be: unknown trigger, bad trigger arguments, unknown time zone."""


class ScheduleNotFoundError(OrchestratorError):
    def __init__(self, schedule_id: object) -> None:
        super().__init__(f"Schedule {schedule_id} not found")
        self.schedule_id = schedule_id


class CallbackTokenError(OrchestratorError):
    def __init__(self) -> None:
        super().__init__("Invalid token")


class InconsistentDataError(Exception):
    """Raised by a step when data is inconsistent; a task failing with it ends `inconsistent_data`."""


class ApiUnavailableError(Exception):
    """Raised by a step when an API it needs is down; a task failing with it ends `api_unavailable`."""


class ProcessFailureError(Exception):
    """A step failure with structured details, stored in the error state as `details`."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message, details)
        self.message = message
        self.details = details


class ActionNotAllowedError(OrchestratorError):
    """The action is not allowed for this process (e.g. deleting a process that is not a task)."""
