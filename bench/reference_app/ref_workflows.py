"""The bench workflows for orchestrator-core 5.5: the same steps as orchestrator/examples/workflows.py."""

from orchestrator.core.forms import FormPage
from orchestrator.core.targets import Target
from orchestrator.core.types import State
from orchestrator.core.workflow import StepList, done, init, inputstep, step, workflow

WORKFLOWS = {
    # name: (description, is_task)
    "three_steps": ("Three no-op steps (benchmarks)", False),
    "task_three_steps": ("Three no-op steps as a task (benchmarks)", True),
    "three_steps_with_input": ("Three steps with an input step (benchmarks)", False),
}


@step("One")
def one() -> State:
    return {"one": 1}


@step("Two")
def two() -> State:
    return {"two": 2}


@step("Three")
def three() -> State:
    return {"three": 3}


@workflow("Three no-op steps (benchmarks)", target=Target.SYSTEM)
def three_steps() -> StepList:
    return init >> one >> two >> three >> done


@workflow("Three no-op steps as a task (benchmarks)", target=Target.SYSTEM)
def task_three_steps() -> StepList:
    return init >> one >> two >> three >> done


class NoteForm(FormPage):
    note: str = ""


@inputstep("Wait for input", assignee="SYSTEM")
def wait_for_input() -> type[NoteForm]:
    return NoteForm


@workflow("Three steps with an input step (benchmarks)", target=Target.SYSTEM)
def three_steps_with_input() -> StepList:
    return init >> one >> wait_for_input >> two >> three >> done
