"""Forms in the multi-page protocol of pydantic-forms (the ecosystem's own implementation, used as it is).

A form is either a generator (`user_input = yield FormPage; return {...}`, possibly several pages) or a plain
function that returns a form class (its result is the validated page's `model_dump()`). Form arguments are
injected from the state by name, like step arguments.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Generator
from typing import Any, cast

from pydantic import ConfigDict
from pydantic_forms.core import FormPage, post_form
from pydantic_forms.exceptions import FormNotCompleteError, FormOverflowError, FormValidationError

from orchestrator.dsl.state import inject_args
from orchestrator.dsl.types import State

__all__ = [
    "EmptyForm",
    "FormNotCompleteError",
    "FormOverflowError",
    "FormPage",
    "FormValidationError",
    "InputForm",
    "first_page_schema",
    "run_form",
]

InputForm = Callable[..., Any]
"""A form function: a generator of form pages, or a function returning one form page class."""


class EmptyForm(FormPage):
    """The form of a workflow that declares none: no fields, extra fields forbidden, so `[{}]` starts it."""

    model_config = ConfigDict(title="Start", extra="forbid")


_UNTITLED = FormPage.model_config.get("title")
"""pydantic-forms' placeholder title ("unknown") of a page that sets none: what a form's heading would show."""


@functools.cache
def _titled(page: type[FormPage]) -> type[FormPage]:
    """The page itself, or, when it sets no title, a subclass titled after it (`ApprovalForm` → "Approval form")."""
    if page.model_config.get("title") != _UNTITLED:
        return page
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", page.__name__).split()
    title = " ".join([words[0], *(word.lower() for word in words[1:])]) if words else page.__name__
    return type(page.__name__, (page,), {"model_config": ConfigDict(title=title), "__module__": page.__module__})


def _page(page: Any) -> Any:
    return _titled(page) if isinstance(page, type) and issubclass(page, FormPage) else page


def _as_generator(form: InputForm) -> Callable[[State], Generator[Any, Any, State]]:
    """Adapt a form function to pydantic-forms' `state -> generator` shape, with argument injection; pages get
    a title when they set none."""
    if inspect.isgeneratorfunction(form):

        def generator(state: State) -> Generator[Any, Any, State]:
            pages = form(**inject_args(form, state))
            user_input = None
            try:
                while True:
                    user_input = yield _page(pages.send(user_input))
            except StopIteration as finished:
                return cast(State, finished.value or {})

        return generator

    def single_page(state: State) -> Generator[Any, Any, State]:
        page = form(**inject_args(form, state)) if callable(form) and not isinstance(form, type) else form
        user_input = yield _page(page)
        return cast(State, user_input.model_dump())

    return single_page


def run_form(form: InputForm | None, state: State, user_inputs: list[State]) -> State:
    """Validate `user_inputs` page by page; return the form's result.

    Raises FormValidationError (a page is invalid), FormNotCompleteError (more pages are needed; carries the next
    page's JSON schema) or FormOverflowError (more pages than the form has).
    """
    if form is None:
        return {}
    result = post_form(_as_generator(form), state, list(user_inputs))
    return dict(result or {})


def first_page_schema(form: InputForm | None, state: State) -> dict[str, Any] | None:
    """The JSON schema of the form's first page, to show what a suspended process waits for."""
    if form is None:
        return None
    try:
        run_form(form, state, [])
    except FormNotCompleteError as exc:
        return cast(dict[str, Any], exc.form)
    except Exception:  # a form that cannot render for this state: show nothing rather than fail a read
        return None
    return None
