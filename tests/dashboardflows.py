"""Workflows of the dashboard's browser tests: a suspended process whose form has two pages and every kind of
field, and a process whose state and failure hold hostile HTML."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic_forms.validators import Choice

from orchestrator import FormPage, State, StepList, begin, done, init, inputstep, step, workflow

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'


class Colour(Choice):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    number: int = 1


class DetailsForm(FormPage):
    name: str = Field(description="Who asks")
    count: int = 1
    ratio: float = 0.5
    urgent: bool = False
    colour: Colour = Colour.RED
    tags: list[str] = []
    address: Address


class ConfirmForm(FormPage):
    confirm: bool
    comment: str = ""


@inputstep("Fill details")
def fill_details() -> Any:
    details = yield DetailsForm
    confirmation = yield ConfirmForm
    return {"details": details.model_dump(mode="json"), "confirmed": confirmation.confirm}


@step("Use details")
def use_details(details: dict[str, Any], confirmed: bool) -> State:
    return {"summary": f"{details['name']} x{details['count']} at {details['address']['street']} ({confirmed})"}


@workflow("Two-page input")
def df_two_page_input() -> StepList:
    return init >> fill_details >> use_details >> done


@step("Hostile")
def hostile() -> State:
    return {"html": HOSTILE}


@step("Fail hostile")
def fail_hostile() -> State:
    raise ValueError(HOSTILE)


@workflow("Hostile state")
def df_hostile() -> StepList:
    return begin >> init >> hostile >> fail_hostile >> done
