"""How state flows: argument injection by parameter name, merges, error dicts and the internal keys.

Behaviour follows orchestrator-core (sections 1.3-1.5 of the reference) so that ported steps keep working.
"""

from __future__ import annotations

import inspect
import traceback as tb
import types
import typing
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any
from uuid import UUID

import structlog

from orchestrator.dsl.types import State
from orchestrator.exceptions import ApiUnavailableError, InconsistentDataError, ProcessFailureError

logger = structlog.get_logger(__name__)

REMOVE_KEYS = "__remove_keys"
STEP_NAME_OVERRIDE = "__step_name_override"
REPLACE_LAST_STATE = "__replace_last_state"
LAST_STEP_STARTED_AT = "__last_step_started_at"
STEP_GROUP = "__step_group"
SUB_STEP = "__sub_step"
CALLBACK_TOKEN = "__callback_token"  # noqa: S105 - a state key, not a secret
CALLBACK_RESULT_KEY = "__callback_result_key"
CALLBACK_TIMEOUT = "__callback_timeout"

ENGINE_KEYS = ("process_id", "reporter", "workflow_name", "workflow_target")


def deep_merge(target: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge user input into state: nested dicts merge recursively, other values are replaced. Returns a copy."""
    merged = dict(target)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def shallow_merge(state: State, returned: Mapping[str, Any] | None) -> State:
    """Merge a step's return value over its input; keys are never deleted this way (use `__remove_keys`)."""
    return {**state, **(returned or {})}


def strip_removed_keys(state: State) -> State:
    """Drop the keys listed in `__remove_keys`, then `__remove_keys` itself."""
    if REMOVE_KEYS not in state:
        return state
    removed = set(state.get(REMOVE_KEYS) or ()) | {REMOVE_KEYS}
    return {k: v for k, v in state.items() if k not in removed}


def _api_exception_in_mro(exc: BaseException) -> bool:
    return any(cls.__name__ == "ApiException" for cls in type(exc).__mro__)


def error_state(exc: BaseException) -> State:
    """The state a failed or waiting step stores: the error dict, not the accumulated state."""
    state: State = {
        "class": type(exc).__name__,
        "error": str(exc),
        "traceback": "".join(tb.format_exception(exc)),
    }
    if isinstance(exc, ProcessFailureError):
        state["error"] = exc.message
        state["details"] = exc.details
    elif _api_exception_in_mro(exc):
        state["error"] = getattr(exc, "reason", str(exc))
        state["status_code"] = getattr(exc, "status", None)
        state["body"] = getattr(exc, "body", None)
        headers = getattr(exc, "headers", None)
        state["headers"] = dict(headers) if isinstance(headers, Mapping) else headers
    return state


def is_inconsistent_data(exc: BaseException | None) -> bool:
    return isinstance(exc, AssertionError | InconsistentDataError)


def is_api_unavailable(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, ApiUnavailableError):
        return True
    if any(cls.__name__ == "MaxRetryError" and cls.__module__.startswith("urllib3") for cls in type(exc).__mro__):
        return True
    return _api_exception_in_mro(exc) and getattr(exc, "status", None) in (502, 503, 504)


# --- argument injection -------------------------------------------------------------------------------------------


class _Param(typing.NamedTuple):
    name: str
    has_default: bool
    default: Any
    convert: Callable[[Any], Any] | None


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _converter(annotation: Any) -> Callable[[Any], Any] | None:
    if annotation is UUID:
        return _uuid
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and args and args[0] is UUID:
        return lambda value: [_uuid(v) for v in value]
    if origin in (typing.Union, types.UnionType) and UUID in args and type(None) in args and len(args) == 2:
        return lambda value: None if value is None else _uuid(value)
    if inspect.isclass(annotation) and hasattr(annotation, "unwrap") and annotation not in (str, dict, list):
        factory = typing.cast(Callable[[Any], Any], annotation)
        return lambda value: value if isinstance(value, annotation) else factory(value)
    return None


@lru_cache(maxsize=4096)
def _parameters(func: Callable[..., Any]) -> tuple[_Param, ...]:
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolved forward references: fall back to no conversion
        hints = {}
    params = []
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            logger.warning("step parameter ignored", parameter=param.name, function=func.__qualname__)
            continue
        has_default = param.default is not param.empty
        params.append(
            _Param(param.name, has_default, param.default if has_default else None, _converter(hints.get(param.name)))
        )
    return tuple(params)


def inject_args(func: Callable[..., Any], state: State) -> dict[str, Any]:
    """Resolve `func`'s parameters from `state` by name (`state` gets the whole dict)."""
    kwargs: dict[str, Any] = {}
    for param in _parameters(func):
        if param.name == "state":
            kwargs["state"] = state
            continue
        if param.name in state:
            value = state[param.name]
        elif param.has_default:
            value = param.default
        else:
            raise KeyError(
                f"Could not find key '{param.name}' in state. for function {func.__module__}.{func.__qualname__}"
            )
        if param.convert is not None and value is not None:
            try:
                value = param.convert(value)
            except (TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"Could not convert value {value!r} of '{param.name}': {exc}") from exc
        kwargs[param.name] = value
    return kwargs
