"""Workflows and the registry of workflows known to this program.

`@workflow(...)` calls the decorated function once, at decoration time, and keeps its StepList. Unlike
orchestrator-core, `is_task` is declared in code (`@workflow(..., is_task=True)`) and the database row is
upserted at start-up, so registering a workflow needs no hand-written migration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.dsl.forms import InputForm
from orchestrator.dsl.schedules import Schedule
from orchestrator.dsl.steps import Authorizer, Step, StepList
from orchestrator.dsl.types import Target
from orchestrator.exceptions import InvalidWorkflowError, WorkflowNotFoundError


@dataclass(frozen=True)
class RunPredicatePass:
    pass


@dataclass(frozen=True)
class RunPredicateFail:
    message: str


@dataclass(frozen=True)
class PredicateContext:
    workflow: Workflow
    workflow_key: str


RunPredicate = Callable[[PredicateContext], Any]


@dataclass(eq=False)
class Workflow:
    name: str
    steps: StepList
    description: str = ""
    initial_input_form: InputForm | None = None
    target: Target = Target.SYSTEM
    is_task: bool = False
    authorize_callback: Authorizer | None = None
    retry_auth_callback: Authorizer | None = None
    run_predicate: RunPredicate | None = None
    schedules: tuple[Schedule, ...] = ()
    """Schedules declared in code: upserted at start-up, like the workflow itself."""
    step_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.step_names = tuple(s.name for s in self.steps)

    def __call__(self) -> None:
        raise TypeError(f"Workflow {self.name!r} is not callable; start it with start_process({self.name!r}, ...)")


def workflow(
    description: str = "",
    initial_input_form: InputForm | None = None,
    target: Target = Target.SYSTEM,
    *,
    is_task: bool = False,
    authorize_callback: Authorizer | None = None,
    retry_auth_callback: Authorizer | None = None,
    run_predicate: RunPredicate | None = None,
    key: str | None = None,
    schedules: Sequence[Schedule] = (),
) -> Callable[[Callable[[], StepList]], Workflow]:
    """Declare a workflow (or, with `is_task=True`, a task) and register it under the function's name;
    `schedules` (`Cron(...)`, `Interval(...)`, `Once(...)`) start it by themselves."""

    def decorate(func: Callable[[], StepList]) -> Workflow:
        steps = func()
        if isinstance(steps, Step):
            steps = StepList([steps])
        if not isinstance(steps, StepList):
            raise InvalidWorkflowError(
                f"Workflow {func.__name__!r} must return a StepList (build it with begin >> ...), "
                f"got {type(steps).__name__}"
            )
        wf = Workflow(
            name=key or func.__name__,
            steps=steps,
            description=description or (func.__doc__ or "").strip().split("\n")[0],
            initial_input_form=initial_input_form,
            target=Target(target),
            is_task=is_task,
            authorize_callback=authorize_callback,
            retry_auth_callback=retry_auth_callback or authorize_callback,
            run_predicate=run_predicate,
            schedules=tuple(schedules),
        )
        register(wf)
        return wf

    return decorate


class WorkflowRegistry(dict[str, Workflow]):
    """Workflows by key. The module-level `WORKFLOWS` is the default one."""

    def get_or_raise(self, key: str) -> Workflow:
        try:
            return self[key]
        except KeyError:
            raise WorkflowNotFoundError(key) from None


WORKFLOWS = WorkflowRegistry()


def register(wf: Workflow, registry: WorkflowRegistry = WORKFLOWS) -> None:
    existing = registry.get(wf.name)
    if existing is not None and existing is not wf and existing.step_names != wf.step_names:
        raise InvalidWorkflowError(f"Two different workflows are registered under the key {wf.name!r}")
    registry[wf.name] = wf


def import_workflow_modules(modules: list[str]) -> None:
    """Import the modules of WORKFLOW_MODULES so that their `@workflow`s register."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InvalidWorkflowError(f"Invalid workflow module {module!r}: {exc}") from exc
