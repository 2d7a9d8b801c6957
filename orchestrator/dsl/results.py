"""The result of one step: a sum type of eight variants that each wrap a state.

Mirrors orchestrator-core's `Process`: the variant decides the step row's status and the process's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from orchestrator.dsl.types import ProcessStatus, State, StepStatus


@dataclass(frozen=True, slots=True)
class Process:
    state: State
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception behind a Failed or Waiting result, kept to classify task failures by type."""
    step_status: ClassVar[StepStatus]
    process_status: ClassVar[ProcessStatus]

    @property
    def runs_next(self) -> bool:
        """Only Success and Skipped let the next step run."""
        return isinstance(self, Success | Skipped)

    @property
    def failed(self) -> bool:
        return isinstance(self, Failed | Waiting)


class Success(Process):
    step_status = StepStatus.SUCCESS
    process_status = ProcessStatus.RUNNING


class Skipped(Process):
    step_status = StepStatus.SKIPPED
    process_status = ProcessStatus.RUNNING


class Suspend(Process):
    step_status = StepStatus.SUSPEND
    process_status = ProcessStatus.SUSPENDED


class Waiting(Process):
    step_status = StepStatus.WAITING
    process_status = ProcessStatus.WAITING


class AwaitingCallback(Process):
    step_status = StepStatus.AWAITING_CALLBACK
    process_status = ProcessStatus.AWAITING_CALLBACK


class Abort(Process):
    step_status = StepStatus.ABORT
    process_status = ProcessStatus.ABORTED


class Failed(Process):
    step_status = StepStatus.FAILED
    process_status = ProcessStatus.FAILED


class Complete(Process):
    step_status = StepStatus.COMPLETE
    process_status = ProcessStatus.COMPLETED


VARIANTS: dict[str, type[Process]] = {
    cls.step_status.value: cls
    for cls in (Success, Skipped, Suspend, Waiting, AwaitingCallback, Abort, Failed, Complete)
}


def from_step_status(status: str, state: State) -> Process:
    """Turn a stored step row back into a result (reload)."""
    try:
        return VARIANTS[status](state)
    except KeyError:
        raise ValueError(f"Unknown step status in the step log: {status!r}") from None
