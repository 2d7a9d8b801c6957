"""Operations are declared once, next to their endpoints, with their parameters, body and replies; the app's routes
and the OpenAPI document are both built from these declarations.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]

_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Body:
    model: Any
    """The JSON body's type: anything pydantic validates (a model, `list[...]`, a union)."""
    description: str
    text: bool = False
    """Also accepted as `text/plain` (a string)."""


@dataclass(frozen=True)
class Reply:
    status: int
    description: str
    model: Any = None
    """None: the reply has no body."""
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers: name → description."""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    endpoint: Endpoint
    summary: str
    tag: str
    params: tuple[Param, ...]
    body: Body | None
    replies: tuple[Reply, ...]

    @property
    def description(self) -> str:
        return inspect.getdoc(self.endpoint) or ""

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


class Api:
    """A group of operations (one module's endpoints) under one OpenAPI tag."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []

    def operation(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        params: Sequence[Param] = (),
        body: Body | None = None,
        replies: Sequence[Reply] = (),
    ) -> Callable[[Endpoint], Endpoint]:
        def register(endpoint: Endpoint) -> Endpoint:
            self.operations.append(
                Operation(method, path, endpoint, summary, self.tag, tuple(params), body, tuple(replies))
            )
            return endpoint

        return register


@cache
def adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def json_reply(model: Any, value: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Serialise `value` through `model`, the type the operation's reply declares."""
    ta = adapter(model)
    return Response(ta.dump_json(ta.validate_python(value)), status, headers, media_type="application/json")


def _dispatcher(operations: Sequence[Operation]) -> Endpoint:
    """One endpoint per URL template: picks the operation by method and gives it its own path parameter names
    (`POST /api/processes/{workflow_key}` and `GET /api/processes/{process_id}` share a template)."""
    by_method = {op.method: op for op in operations}
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method["GET"])

    async def dispatch(request: Request) -> Response:
        op = by_method[request.method]
        request.scope["path_params"] = dict(zip(op.path_params, request.path_params.values(), strict=True))
        return await op.endpoint(request)

    return dispatch


def build_routes(operations: Sequence[Operation]) -> list[Route]:
    """Starlette routes, literal paths before templated ones (`/processes/status-counts` before `/{process_id}`)."""
    groups: dict[str, list[Operation]] = {}
    for op in operations:
        groups.setdefault(_PATH_PARAM.sub("{}", op.path), []).append(op)
    ordered = sorted(groups.values(), key=lambda ops: len(ops[0].path_params))
    return [Route(ops[0].path, _dispatcher(ops), methods=[op.method for op in ops]) for ops in ordered]
