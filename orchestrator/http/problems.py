"""Every error leaves the API as an RFC 9457 problem (`application/problem+json`), with orchestrator-core's extra
keys (`validation_errors`, `form`), so clients parse one shape whatever went wrong and never see a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Self, cast

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import FormNotCompleteError, FormOverflowError, FormValidationError
from orchestrator.exceptions import (
    ActionNotAllowedError,
    CallbackTokenError,
    EngineLockedError,
    NotAuthorizedError,
    OrchestratorError,
    ProcessNotFoundError,
    ProcessStatusError,
    ScheduleError,
    ScheduleNotFoundError,
    StartPredicateError,
    WorkflowNotFoundError,
)
from orchestrator.services import DatabaseUnavailableError, QueryError, ValueRefusedError

logger = structlog.get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
MAX_ECHO = 200
"""Characters of a client's input (a workflow key, a field's value) echoed back in a problem."""
MAX_DETAIL = 500
"""A detail longer than this (one that quotes a long input) is cut."""


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _echo(value: Any) -> Any:
    """A bad input as echoed in `validation_errors`: long strings and large structures cut to MAX_ECHO."""
    if isinstance(value, str):
        return shorten(value)
    if isinstance(value, dict | list) and len(text := jsonutil.dumps_str(value)) > MAX_ECHO:
        return shorten(text)
    return value


STATUS_OF: Mapping[type[OrchestratorError], int] = {
    WorkflowNotFoundError: 404,
    ProcessNotFoundError: 404,
    CallbackTokenError: 404,
    NotAuthorizedError: 403,
    StartPredicateError: 412,
    ProcessStatusError: 409,
    EngineLockedError: 503,
    ScheduleNotFoundError: 404,
    ScheduleError: 400,
    ActionNotAllowedError: 400,
}


class Problem(Response):
    media_type = PROBLEM_MEDIA_TYPE

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        detail = shorten(detail or phrase, MAX_DETAIL)
        body = {"type": type, "title": title or phrase, "status": status, "detail": detail, **extra}
        super().__init__(jsonutil.dumps(body), status_code=status, headers=headers)


class InvalidRequestError(Exception):
    """A request whose parameters or body do not fit the operation (422, with pydantic-style errors)."""

    def __init__(self, errors: list[dict[str, Any]], detail: str = "The request is not valid") -> None:
        super().__init__(detail)
        self.errors = errors
        self.detail = detail

    @classmethod
    def at(cls, *loc: str, msg: str, kind: str, detail: str = "The request is not valid", **extra: Any) -> Self:
        """One error at `loc` (`"path", "process_id"`), in pydantic's shape."""
        echoed = {key: _echo(value) if key == "input" else value for key, value in extra.items()}
        return cls([{"loc": list(loc), "msg": msg, "type": kind, **echoed}], detail)


def plain_errors(errors: Any) -> list[dict[str, Any]]:
    """pydantic error dicts made JSON-safe: `ctx` may hold the exception objects validators raised."""
    result = []
    for error in errors:
        item = {k: v for k, v in dict(error).items() if k != "ctx"}
        if "input" in item:
            item["input"] = _echo(item["input"])
        if "ctx" in error:
            item["ctx"] = {
                k: v if isinstance(v, str | int | float | bool | None) else str(v) for k, v in error["ctx"].items()
            }
        result.append(item)
    return cast(list[dict[str, Any]], jsonutil.normalise({"errors": result})["errors"])


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
        detail = f"{request.method} is not allowed here: this URL takes {exc.headers['Allow']}"
    return Problem(exc.status_code, detail, headers=exc.headers)


async def orchestrator_error(request: Request, exc: Exception) -> Response:
    status = next((STATUS_OF[cls] for cls in type(exc).__mro__ if cls in STATUS_OF), None)
    if status is None:
        return await server_error(request, exc)
    return Problem(status, str(exc))


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequestError)
    return Problem(422, exc.detail, validation_errors=exc.errors)


async def invalid_query(request: Request, exc: Exception) -> Response:
    return Problem(400, str(exc))


async def form_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormValidationError)
    return Problem(
        400, str(exc), type="FormValidationError", title="Form not valid", validation_errors=plain_errors(exc.errors)
    )


async def form_incomplete(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FormNotCompleteError)
    return Problem(
        510,
        "The form needs another page",
        type="FormNotCompleteError",
        title="Form not complete",
        form=exc.form,
        meta=exc.meta,
    )


async def form_overflow(request: Request, exc: Exception) -> Response:
    return Problem(400, "More pages were sent than the form has", type="FormOverflowError", title="Form overflow")


async def data_refused(request: Request, exc: Exception) -> Response:
    """PostgreSQL refused a value from the request (a NUL character, an out-of-range date): bad input, not a bug.
    400 as for every value that fits the operation's schema but cannot be used (422: does not fit the schema)."""
    return Problem(400, f"A value was refused by the database: {exc}")


DATABASE_RETRY_AFTER_SECONDS = 2


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """The database is unreachable or refusing connections (a failover, an upgrade): try again shortly."""
    logger.warning("database unavailable", path=request.url.path, method=request.method, error=repr(exc))
    return Problem(
        503,
        "The database is unavailable; try again shortly",
        title="Database unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def server_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error", path=request.url.path, method=request.method, exc_info=exc)
    return Problem(500, "An unexpected error occurred; it has been logged")


HANDLERS: Mapping[Any, Any] = {
    HTTPException: http_error,
    OrchestratorError: orchestrator_error,
    InvalidRequestError: invalid_request,
    QueryError: invalid_query,
    FormValidationError: form_invalid,
    FormNotCompleteError: form_incomplete,
    FormOverflowError: form_overflow,
    ValueRefusedError: data_refused,
    **dict.fromkeys(DatabaseUnavailableError, database_unavailable),
    Exception: server_error,
}
"""Starlette `exception_handlers`; the `Exception` entry becomes the outermost 500 handler."""
