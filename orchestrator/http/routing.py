"""Operations are declared once, next to their endpoints, with their parameters, body and replies; the app's routes
and the OpenAPI document are both built from these declarations.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal
from uuid import UUID

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

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


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


class _UUIDRoute(Route):
    """A route whose `format: uuid` path parameters match only UUIDs: `/api/processes/{process_id}` and
    `/api/processes/{workflow_key}` share a template, and a method one of them lacks must be a 405 naming the methods
    of the operation the URL is for, not a 422 from the other one."""

    def __init__(self, path: str, endpoint: Endpoint, *, methods: list[str], uuid_params: Sequence[str]) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.uuid_params = tuple(uuid_params)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and not all(_is_uuid(child["path_params"][name]) for name in self.uuid_params):
            return Match.NONE, {}
        return match, child


def _uuid_params(operations: Sequence[Operation]) -> list[str]:
    return [
        p.name
        for op in operations
        for p in op.params
        if p.where == "path" and p.schema.get("format") == "uuid" and p.name in op.path_params
    ]


def _route(operations: Sequence[Operation], shared: bool) -> Route:
    by_method = {op.method: op.endpoint for op in operations}

    async def dispatch(request: Request) -> Response:
        return await by_method["GET" if request.method == "HEAD" else request.method](request)

    methods = list(by_method)
    uuid_params = _uuid_params(operations)
    if shared and uuid_params:
        return _UUIDRoute(operations[0].path, dispatch, methods=methods, uuid_params=sorted(set(uuid_params)))
    return Route(operations[0].path, dispatch, methods=methods)


def build_routes(operations: Sequence[Operation]) -> list[Route]:
    """Starlette routes, literal paths before templated ones (`/processes/status-counts` before `/{process_id}`).
    Where two paths share a template, the one with UUID parameters comes first and matches only UUIDs."""
    groups: dict[str, list[Operation]] = {}
    for op in operations:
        groups.setdefault(op.path, []).append(op)
    templates = Counter(_PATH_PARAM.sub("{}", path) for path in groups)
    routes = [_route(ops, templates[_PATH_PARAM.sub("{}", path)] > 1) for path, ops in groups.items()]
    return sorted(routes, key=lambda route: (len(route.param_convertors), not isinstance(route, _UUIDRoute)))
