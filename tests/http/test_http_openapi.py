"""The OpenAPI document describes exactly the routes the app serves, and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from typing import Any

import httpx
import schemathesis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from support.http import AppFactory, asgi_client

from orchestrator.http import dashboard, docs
from orchestrator.settings import AppSettings

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def template(path: str) -> str:
    return re.sub(r"{\w+}", "{}", path)


async def fetch(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


async def test_every_route_is_documented_and_nothing_else(app: Starlette, client: httpx.AsyncClient) -> None:
    """Every route but the API docs page and the dashboard's pages and static files, which are no API operations."""
    doc = await fetch(client)
    pages = {route.path for route in dashboard.routes() if isinstance(route, Route)}
    api_routes = [r for r in app.routes if not isinstance(r, Mount) and not (isinstance(r, Route) and r.path in pages)]
    served = {
        (template(route.path), method.lower())
        for route in api_routes
        if isinstance(route, Route) and route not in docs.ROUTES
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (template(path), method) for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS
    }
    assert served == documented
    websockets = {route.path for route in app.routes if isinstance(route, WebSocketRoute)}
    assert websockets == set(doc["x-websockets"])
    assert all(isinstance(r, Route | WebSocketRoute) for r in api_routes)


async def test_path_parameters_are_declared(client: httpx.AsyncClient) -> None:
    for path, item in (await fetch(client))["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert "500" in operation["responses"]


async def test_valid_openapi_31(client: httpx.AsyncClient) -> None:
    doc = await fetch(client)
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()
    start = doc["paths"]["/api/processes/{workflow_key}"]["post"]
    assert set(start["responses"]) == {"201", "400", "403", "404", "412", "413", "415", "422", "500", "503", "510"}
    assert start["responses"]["510"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/FormIncompleteProblem"
    }
    listing = doc["paths"]["/api/processes"]["get"]["responses"]
    assert set(listing["200"]["headers"]) == {"ETag", "Content-Range", "Link"}
    assert doc["components"]["schemas"]["ProcessOut"]["properties"]["started_at"]["type"] == "number"
    assert "security" not in doc


async def test_secured_document(make_app: AppFactory, settings: AppSettings) -> None:
    secured = settings.model_copy(update={"API_TOKEN": SecretStr("s3cret")})
    async with asgi_client(await make_app(settings=secured)) as client:
        doc = (await client.get("/api/openapi.json", headers={"Authorization": "Bearer s3cret"})).json()
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["paths"]["/api/health"]["get"]["security"] == []
    assert "401" in doc["paths"]["/api/processes"]["get"]["responses"]
    assert "401" not in doc["paths"]["/api/health"]["get"]["responses"]


async def test_the_document_names_the_loaded_workflows_and_describes_the_event_stream(
    client: httpx.AsyncClient,
) -> None:
    """Example workflow keys let a client (or a fuzzer) reach the start, resume and callback logic."""
    doc = await fetch(client)
    start = doc["paths"]["/api/processes/{workflow_key}"]["post"]
    key = next(p for p in start["parameters"] if p["name"] == "workflow_key")
    assert {"tf_simple", "tf_input"} <= set(key["schema"]["examples"])
    events = doc["paths"]["/api/processes/{process_id}/events"]["get"]["responses"]["200"]["content"]
    event = doc["components"]["schemas"]["ProcessEvent"]
    assert events["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/ProcessEvent"}
    assert event["properties"]["event"]["const"] == "process" and set(event["required"]) == {"event", "data"}
    lock = doc["components"]["schemas"]["EngineLock"]
    assert lock["additionalProperties"] is False and lock["properties"]["global_lock"]["type"] == "boolean"
