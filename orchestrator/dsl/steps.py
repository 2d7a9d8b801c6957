"""Steps and step lists: the DSL that workflows are written in, with orchestrator-core's names and semantics.

A step is an async callable `(state, ctx) -> Process`. User functions may be `def` or `async def`: async ones
run on the event loop, sync ones in the engine's bounded thread pool (`ctx.run_sync`), never blocking the loop.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, SupportsIndex, overload

import structlog

from orchestrator.dsl.forms import InputForm
from orchestrator.dsl.results import (
    Abort,
    AwaitingCallback,
    Complete,
    Failed,
    Process,
    Skipped,
    Success,
    Suspend,
    Waiting,
)
from orchestrator.dsl.retry import RetryPolicy
from orchestrator.dsl.state import (
    CALLBACK_RESULT_KEY,
    CALLBACK_TIMEOUT,
    CALLBACK_TOKEN,
    REMOVE_KEYS,
    REPLACE_LAST_STATE,
    STEP_GROUP,
    STEP_NAME_OVERRIDE,
    SUB_STEP,
    error_state,
    inject_args,
    shallow_merge,
)
from orchestrator.dsl.types import Assignee, State
from orchestrator.exceptions import InvalidWorkflowError

if TYPE_CHECKING:
    from orchestrator.dsl.parallel import Fork

logger = structlog.get_logger(__name__)

Authorizer = Callable[[Any], bool | Awaitable[bool]]


class StepContext(Protocol):
    """What the engine offers a running step."""

    async def run_sync(self, func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """Run a sync function in the bounded thread pool."""

    async def log(self, name: str, result: Process) -> Process:
        """Persist an intermediate row (step groups) and return the result as stored."""

    async def run_fork(self, fork: Fork, state: State) -> Process:
        """Run the branches of `parallel`/`map_parallel` from `state` and join them."""


StepFunc = Callable[[State, StepContext], Awaitable[Process]]


@dataclass(frozen=True, eq=False)
class Step:
    name: str
    func: StepFunc
    form: InputForm | None = None
    assignee: Assignee | str = Assignee.SYSTEM
    resume_auth_callback: Authorizer | None = None
    retry_auth_callback: Authorizer | None = None
    sub_steps: tuple[Step, ...] = field(default=())
    fork: Fork | None = None
    """Set on the step of `parallel`/`map_parallel`: its branches."""
    retry: RetryPolicy | None = None
    """A failure is tried again by the engine, as the policy says (`dsl/retry.py`)."""
    pure: bool = False
    """The built-in steps (`init`, `done`, `abort`): the outcome is a function of the state alone, with no side
    effect and no user code, so running it again after a crash changes nothing. The engine commits such an
    outcome together with a neighbouring step's (one commit less), never alone."""

    async def __call__(self, state: State, ctx: StepContext) -> Process:
        return await self.func(state, ctx)

    def __rshift__(self, other: Step | StepList) -> StepList:
        return StepList([self]) >> other

    def __repr__(self) -> str:
        return f"Step({self.name!r})"


class StepList(list[Step]):
    """A list of steps; `a >> b` returns a new StepList and leaves `a` unchanged."""

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        super().__init__(steps)

    def __rshift__(self, other: Step | StepList) -> StepList:
        if isinstance(other, Step):
            return StepList([*self, other])
        if isinstance(other, StepList):
            return StepList([*self, *other])
        raise InvalidWorkflowError(
            f"Expected @step decorated function or type Step or StepList, got {type(other).__name__} instead"
        )

    @overload
    def __getitem__(self, index: SupportsIndex) -> Step: ...
    @overload
    def __getitem__(self, index: slice) -> StepList: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Step | StepList:
        if isinstance(index, slice):
            return StepList(super().__getitem__(index))
        return super().__getitem__(index)

    def __str__(self) -> str:
        return f"StepList [{', '.join(step.name for step in self)}]"

    __repr__ = __str__


def _as_steps(item: Step | StepList) -> Iterator[Step]:
    if isinstance(item, Step):
        yield item
    elif isinstance(item, StepList):
        yield from item
    else:
        raise InvalidWorkflowError(
            f"Expected @step decorated function or type Step or StepList, got {type(item).__name__} instead"
        )


def _call_user_function(func: Callable[..., Any], on_error: type[Process]) -> StepFunc:
    """Wrap a user step: inject arguments, run it (loop or thread), shallow-merge its result."""
    is_async = inspect.iscoroutinefunction(func)

    async def run(state: State, ctx: StepContext) -> Process:
        try:
            kwargs = inject_args(func, state)
            result = await func(**kwargs) if is_async else await ctx.run_sync(func, kwargs)
            if isinstance(result, Process):
                return result
            if result is not None and not isinstance(result, Mapping):
                raise TypeError(f"Step {func.__qualname__} returned {type(result).__name__}, expected a dict or None")
            return Success(shallow_merge(state, result))
        except Exception as exc:
            logger.warning("step failed", step=func.__qualname__, error=str(exc))
            return on_error(error_state(exc), exc)

    return run


def _decorator(name: str, on_error: type[Process], **options: Any) -> Callable[[Callable[..., Any]], Step]:
    def decorate(func: Callable[..., Any]) -> Step:
        return Step(name=name, func=_call_user_function(func, on_error), **options)

    return decorate


def step(
    name: str, retry_auth_callback: Authorizer | None = None, *, retry: RetryPolicy | None = None
) -> Callable[[Callable[..., Any]], Step]:
    """A step: its return value is merged over the state; an exception fails the process (with `retry`, once the
    policy's attempts are spent; until then the process is `waiting` for the next attempt)."""
    return _decorator(name, Failed, retry_auth_callback=retry_auth_callback, retry=retry)


def retrystep(
    name: str, retry_auth_callback: Authorizer | None = None, *, retry: RetryPolicy | None = None
) -> Callable[[Callable[..., Any]], Step]:
    """Like `step`, but an exception leaves the process `waiting`: without `retry`, the engine tries it again
    after RETRY_WAITING_AFTER_SECONDS; with it, as the policy says, and `failed` once its attempts are spent."""
    return _decorator(name, Waiting, retry_auth_callback=retry_auth_callback, retry=retry)


def inputstep(
    name: str,
    assignee: Assignee | str = Assignee.SYSTEM,
    resume_auth_callback: Authorizer | None = None,
    retry_auth_callback: Authorizer | None = None,
) -> Callable[[InputForm], Step]:
    """A step that suspends the process for user input. The decorated form function is never run by the engine."""

    def decorate(form: InputForm) -> Step:
        async def suspend(state: State, ctx: StepContext) -> Process:
            return Suspend(state)

        return Step(
            name=name,
            func=suspend,
            form=form,
            assignee=assignee,
            resume_auth_callback=resume_auth_callback,
            retry_auth_callback=retry_auth_callback,
        )

    return decorate


def purestep(name: str) -> Callable[[Callable[[State], Process]], Step]:
    """A step given the raw state that returns a Process itself (no injection)."""

    def decorate(func: Callable[[State], Process]) -> Step:
        async def run(state: State, ctx: StepContext) -> Process:
            return func(state)

        return Step(name=name, func=run)

    return decorate


def conditional(predicate: Callable[[State], bool]) -> Callable[[Step | StepList], StepList]:
    """Run each wrapped step only if `predicate(state)` holds when that step is reached; otherwise log it skipped."""

    def wrap(item: Step | StepList) -> StepList:
        def guarded(inner: Step) -> Step:
            async def run(state: State, ctx: StepContext) -> Process:
                if predicate(state):
                    return await inner(state, ctx)
                return Skipped(state)

            # Unlike orchestrator-core, the auth callbacks are kept: a condition must not widen who may resume.
            return replace(inner, func=run)

        return StepList(guarded(s) for s in _as_steps(item))

    return wrap


def focussteps(key: str) -> Callable[[Step | StepList], StepList]:
    """Run each wrapped step on `state[key]` only; its result is put back under `key`."""

    def wrap(item: Step | StepList) -> StepList:
        def focused(inner: Step) -> Step:
            async def run(state: State, ctx: StepContext) -> Process:
                result = await inner(dict(state.get(key, {})), ctx)
                if result.failed:
                    return result
                return type(result)({**state, key: result.state}, result.exception)

            return replace(inner, func=run)

        return StepList(focused(s) for s in _as_steps(item))

    return wrap


def step_group(
    name: str,
    steps: Step | StepList,
    extract_form: bool = True,
    retry_auth_callback: Authorizer | None = None,
) -> Step:
    """Several steps shown as one: one step-log row per group run, named after the group.

    A suspend or callback inside the group is resumed after the sub-step that waited; a failure re-runs the whole
    group from its first sub-step on retry.
    """
    sub_steps = tuple(_as_steps(steps))
    if not sub_steps:
        raise InvalidWorkflowError(f"Step group {name!r} has no steps")
    names = [s.name for s in sub_steps]
    if len(set(names)) != len(names):
        raise InvalidWorkflowError(f"Step group {name!r} has duplicate sub-step names: {names}")

    async def run(state: State, ctx: StepContext) -> Process:
        start = 0
        logged = False
        if state.get(STEP_GROUP) == name and state.get(SUB_STEP) in names:
            start = names.index(state[SUB_STEP]) + 1  # re-entry after a suspend or await inside the group
            logged = True  # the resume logged a row for the group; the next sub-step replaces it
        current = {**state, STEP_GROUP: name}
        result: Process = Success(current)
        for sub in sub_steps[start:]:
            result = await sub(current, ctx)
            current = {**result.state, SUB_STEP: sub.name, STEP_NAME_OVERRIDE: name}
            if logged:
                current[REPLACE_LAST_STATE] = True
            if not result.runs_next:
                if result.failed:  # a failure replaces the group's row with the bare error dict
                    return type(result)(
                        {**result.state, STEP_NAME_OVERRIDE: name, REPLACE_LAST_STATE: logged}, result.exception
                    )
                return type(result)(current, result.exception)
            if sub is not sub_steps[-1]:
                stored = await ctx.log(name, type(result)(current))
                current = {**stored.state, STEP_GROUP: name}
                logged = True
        final = {k: v for k, v in result.state.items() if k not in (STEP_GROUP, SUB_STEP)}
        final.update({STEP_NAME_OVERRIDE: name, REPLACE_LAST_STATE: logged})
        return type(result)(final)

    form = next((s.form for s in sub_steps if s.form is not None), None) if extract_form else None
    return Step(name=name, func=run, form=form, retry_auth_callback=retry_auth_callback, sub_steps=sub_steps)


def callback_step(
    name: str,
    action_step: Step,
    validate_step: Step,
    result_key: str | None = None,
    callback_route_key: str = "callback_route",
    timeout: float | None = None,
) -> Step:
    """A group that exposes a callback endpoint, runs `action_step`, waits for the callback, then validates it."""

    @purestep(f"{name} - Create endpoint")
    def create_endpoint(state: State) -> Process:
        token = secrets.token_urlsafe()
        route = f"/api/processes/{state['process_id']}/callback/{token}"
        return Success({**state, callback_route_key: route, CALLBACK_TOKEN: token})

    @purestep(f"{name} - Await callback")
    def await_callback(state: State) -> Process:
        extra: State = {}
        if result_key:
            extra[CALLBACK_RESULT_KEY] = result_key
        if timeout is not None:
            extra[CALLBACK_TIMEOUT] = timeout
        return AwaitingCallback({**state, **extra})

    @purestep(f"{name} - Cleanup callback step")
    def cleanup(state: State) -> Process:
        return Success({**state, REMOVE_KEYS: [CALLBACK_TOKEN, CALLBACK_RESULT_KEY, CALLBACK_TIMEOUT]})

    return step_group(name, create_endpoint >> action_step >> await_callback >> validate_step >> cleanup)


def _builtin(name: str, variant: type[Process]) -> StepList:
    async def builtin(state: State, ctx: StepContext) -> Process:
        return variant(state)

    return StepList([Step(name=name, func=builtin, pure=True)])


begin = StepList()
init = _builtin("Start", Success)
done = _builtin("Done", Complete)
abort = _builtin("Abort", Abort)
