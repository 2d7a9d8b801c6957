"""The OpenAPI 3.1 document, generated from the operations' declarations and their pydantic models, so that it
describes the routes the app actually serves. Replies every operation can give are added here: 500, 403 (the
authorizer), 401 (with API_TOKEN), 422 (a parameter or the body does not fit this document), 413 (body too large)
and 415 (a body that is not JSON). A request that fits the document but whose values cannot be used (a form page
the workflow refuses, an unknown filter field, a cron expression that never fires) is a 400.

The workflow keys this program has loaded are the `examples` of `{workflow_key}`, so that a client (or a fuzzer)
finds workflows to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import __doc__ as package_doc
from orchestrator.http.auth import PUBLIC_PATHS
from orchestrator.http.context import context
from orchestrator.http.live import WEBSOCKET_PATH
from orchestrator.http.models import ProblemDetails, ValidationProblem
from orchestrator.http.params import WORKFLOW_KEY
from orchestrator.http.problems import PROBLEM_MEDIA_TYPE
from orchestrator.http.routing import Api, Operation, Param, Reply, adapter, json_reply

api = Api("openapi")

OPENAPI_PATH = "/api/openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"


def _common_replies(op: Operation, secured: bool) -> list[Reply]:
    replies = [Reply(403, "The authorizer refused the action"), Reply(500, "Unexpected error (logged)")]
    if secured and op.path not in PUBLIC_PATHS:
        replies.append(Reply(401, "Missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}))
    if op.params or op.body:
        replies.append(Reply(422, "A parameter or the body does not fit (`validation_errors`)", ValidationProblem))
    if op.body:
        replies.append(Reply(413, "The body is larger than MAX_BODY_BYTES"))
        media = "JSON or text/plain" if op.body.text else "JSON"
        replies.append(Reply(415, f"The body's content type is not {media}"))
    return replies


def _replies(op: Operation, secured: bool) -> list[Reply]:
    declared = {reply.status: reply for reply in op.replies}
    extra = [reply for reply in _common_replies(op, secured) if reply.status not in declared]
    return sorted([*op.replies, *extra], key=lambda reply: reply.status)


def _reply_model(reply: Reply) -> Any:
    """Error replies without a declared model carry a plain problem."""
    return ProblemDetails if reply.model is None and reply.status >= 400 else reply.model


class _Schemas:
    """Every type the operations use, resolved together into `components/schemas` and `$ref`s to them."""

    def __init__(self) -> None:
        self._adapters: dict[tuple[Any, JsonSchemaMode], TypeAdapter[Any]] = {}
        self._refs: dict[tuple[Any, JsonSchemaMode], dict[str, Any]] = {}
        self.components: dict[str, Any] = {}

    def add(self, model: Any, mode: JsonSchemaMode) -> None:
        self._adapters.setdefault((model, mode), adapter(model))

    def resolve(self) -> None:
        inputs = [(model, mode, ta) for (model, mode), ta in self._adapters.items()]
        self._refs, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE)
        self.components = definitions.get("$defs", {})

    def ref(self, model: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        return self._refs[(model, mode)]


def _parameter(param: Param, workflow_keys: Sequence[str]) -> dict[str, Any]:
    schema = dict(param.schema)
    if param == WORKFLOW_KEY and workflow_keys:
        schema["examples"] = list(workflow_keys)
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": schema,
    }


def _response(reply: Reply, schemas: _Schemas) -> dict[str, Any]:
    response: dict[str, Any] = {"description": reply.description}
    model = _reply_model(reply)
    if model is not None:
        media = PROBLEM_MEDIA_TYPE if reply.status >= 400 else reply.media_type
        response["content"] = {media: {"schema": schemas.ref(model, "serialization")}}
    if reply.headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in reply.headers.items()
        }
    return response


def _operation(op: Operation, schemas: _Schemas, secured: bool, workflow_keys: Sequence[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "operationId": op.endpoint.__name__,
        "summary": op.summary,
        "description": op.description,
        "tags": [op.tag],
        "parameters": [_parameter(p, workflow_keys) for p in op.params],
        "responses": {str(reply.status): _response(reply, schemas) for reply in _replies(op, secured)},
    }
    if op.body is not None:
        content = {"application/json": {"schema": schemas.ref(op.body.model, "validation")}}
        if op.body.text:
            content["text/plain"] = {"schema": {"type": "string"}}
        entry["requestBody"] = {"required": True, "description": op.body.description, "content": content}
    if secured and op.path in PUBLIC_PATHS:
        entry["security"] = []
    return entry


def document(operations: Sequence[Operation], *, secured: bool, workflow_keys: Sequence[str] = ()) -> dict[str, Any]:
    schemas = _Schemas()
    for op in operations:
        if op.body is not None:
            schemas.add(op.body.model, "validation")
        for reply in _replies(op, secured):
            if (model := _reply_model(reply)) is not None:
                schemas.add(model, "serialization")
    schemas.resolve()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas, secured, workflow_keys)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "orchestrator-async",
            "version": version("orchestrator-async"),
            "description": (package_doc or "").strip(),
        },
        "paths": paths,
        "components": {"schemas": schemas.components},
        "x-websockets": {
            WEBSOCKET_PATH: {
                "summary": "orchestrator-core's invalidateCache messages for every process change",
                "description": 'Send "__ping__" to get "__pong__". With API_TOKEN, offer the token as the '
                "subprotocols `base64.bearer.token, <token>` or as `?token=`.",
            }
        },
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


@api.operation(
    "GET",
    OPENAPI_PATH,
    summary="This document",
    replies=[Reply(200, "OpenAPI 3.1", dict[str, Any])],
)
async def openapi(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    if not ctx.openapi:
        ctx.openapi = document(
            ctx.operations, secured=ctx.settings.API_TOKEN is not None, workflow_keys=sorted(ctx.orchestrator.registry)
        )
    return json_reply(dict[str, Any], ctx.openapi)
