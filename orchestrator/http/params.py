"""Reading a request's parameters and body. Anything that does not fit is a 422 problem, never a 500: bodies are
parsed by orjson (which refuses what PostgreSQL could not store, such as lone surrogates) and then validated by the
operation's declared body type.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from orchestrator.http.auth import REPORTER_MAX_LENGTH
from orchestrator.http.problems import MAX_ECHO, InvalidRequestError, plain_errors
from orchestrator.http.routing import Param, adapter

MAX_JSON_INT = 2**63 - 1
"""orjson parses integers of 64 bits; typed numbers are bounded by it in the schema."""


def integral(value: Any) -> Any:
    """JSON Schema counts `3.0` as an integer: a strict int field takes it as 3."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


PROCESS_ID = Param("process_id", "path", {"type": "string", "format": "uuid"}, "The process id", required=True)
WORKFLOW_KEY = Param("workflow_key", "path", {"type": "string"}, "The workflow's key", required=True)
REPORTER = Param("reporter", "query", {"type": "string", "maxLength": REPORTER_MAX_LENGTH}, "Who to record as the user")


def path_uuid(request: Request, name: str) -> UUID:
    text = request.path_params[name]
    try:
        return UUID(text)
    except ValueError:
        raise InvalidRequestError.at(
            "path", name, msg="Input should be a valid UUID", kind="uuid_parsing", input=text
        ) from None


def is_json(content_type: str | None) -> bool:
    """No content type (curl without -H) counts as JSON; otherwise application/json or a `+json` type."""
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def unsupported_media_type(content_type: str | None, accepted: str = "application/json") -> HTTPException:
    shown = (content_type or "")[:MAX_ECHO]
    return HTTPException(415, f"The body must be {accepted}, not {shown!r}")


async def json_body(request: Request, model: Any) -> Any:
    """The body, parsed as JSON and validated against `model` (the operation's declared body type)."""
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        raise unsupported_media_type(content_type)
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError.at("body", msg="Field required", kind="missing", detail="A JSON body is required")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidRequestError.at(
                "body", msg=f"Invalid JSON: {exc}", kind="json_invalid", detail="The body is not valid JSON"
            ) from None
        # Valid JSON that cannot be stored (a lone surrogate, a number beyond a double).
        raise HTTPException(400, f"The body holds a value this server cannot store: {exc}") from None
    try:
        return adapter(model).validate_python(value)
    except ValidationError as exc:
        errors = [{**error, "loc": ["body", *error["loc"]]} for error in exc.errors(include_url=False)]
        raise InvalidRequestError(plain_errors(errors), "The body does not fit the operation") from None


async def text_body(request: Request) -> str:
    try:
        return (await request.body()).decode()
    except UnicodeDecodeError:
        raise InvalidRequestError.at(
            "body", msg="The body is not valid UTF-8", kind="unicode_decode", detail="The body is not text"
        ) from None
