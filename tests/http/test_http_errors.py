"""Errors are problem+json everywhere; bodies are size-limited; API_TOKEN guards everything but health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.requests import HTTPConnection
from support.http import AppFactory, asgi_client, problem

from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert problem(await client.get("/nowhere"), 404)["title"] == "Not Found"
    problem(await client.get("/api/processes/x/y/z"), 404)
    wrong = await client.delete("/api/workflows")
    problem(wrong, 405)
    assert set(wrong.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    shared = await client.put("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11")
    problem(shared, 405)
    assert set(shared.headers["Allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}


async def test_a_literal_path_or_a_workflow_key_is_not_taken_for_a_process_id(client: httpx.AsyncClient) -> None:
    """`/api/processes/{process_id}` matches UUIDs only: a method a literal path or a workflow's URL lacks is a 405
    naming the methods that URL takes, not a 422 "not a valid UUID" from the process routes."""
    for path, allowed in (
        ("/api/processes/resume-all", {"PUT"}),
        ("/api/processes/status-counts", {"GET", "HEAD"}),
        ("/api/processes/tf_simple", {"POST"}),
    ):
        for method in ("PATCH", "DELETE", "OPTIONS"):
            refused = await client.request(method, path, json={})
            problem(refused, 405)
            assert set(refused.headers["Allow"].split(", ")) == allowed, (method, path)
    problem(await client.get("/api/processes/tf_simple"), 405)
    options = await client.options("/api/processes/8C4ED3FF-4C1F-4A4E-8A8A-1E4B3F9A6A11")  # any case, as UUID() takes
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
    problem(await client.get("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11"), 404)


async def test_bodies_must_be_json(client: httpx.AsyncClient) -> None:
    """A JSON body sent as another content type is a 415, not parsed as JSON anyway."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        refused = await client.post("/api/processes/tf_simple", content=b"[{}]", headers={"content-type": content_type})
        assert content_type in problem(refused, 415)["detail"]
    for content_type in ("application/json", "application/json; charset=utf-8", "application/problem+json"):
        accepted = await client.post(
            "/api/processes/tf_simple", content=b"[{}]", headers={"content-type": content_type}
        )
        assert accepted.status_code == 201, (content_type, accepted.text)
    assert (await client.post("/api/processes/tf_simple", content=b"[{}]")).status_code == 201  # no content type


async def test_problems_echo_a_long_input_shortened(client: httpx.AsyncClient) -> None:
    key = "k" * 5000
    detail = problem(await client.post(f"/api/processes/{key}", json=[{}]), 404)["detail"]
    assert detail.startswith("Workflow does not exist: kkk") and len(detail) < 550
    refused = await client.get("/api/processes/" + "8" * 5000 + "/resume")
    assert len(refused.text) < 1000
    errors = problem(await client.put("/api/settings/status", json={"global_lock": "x" * 5000}), 422)
    assert len(errors["validation_errors"][0]["input"]) < 250


async def test_body_limit(make_app: AppFactory, settings: AppSettings, orch: Orchestrator) -> None:
    small = settings.model_copy(update={"MAX_BODY_BYTES": 1024})
    async with asgi_client(await make_app(settings=small)) as client:
        page = [{"x": "y" * 2000}]
        declared = await client.post("/api/processes/tf_simple", json=page)
        assert "larger than 1024 bytes" in problem(declared, 413)["detail"]

        async def chunks() -> AsyncIterator[bytes]:
            yield b'[{"x": "'
            for _ in range(10):
                yield b"y" * 200
            yield b'"}]'

        chunked = await client.post("/api/processes/tf_simple", content=chunks())
        assert "content-length" not in chunked.request.headers
        problem(chunked, 413)
        assert (await client.post("/api/processes/tf_simple", json=[{}])).status_code == 201


async def test_unexpected_errors_are_500_without_details(make_app: AppFactory) -> None:
    async def broken(conn: HTTPConnection, action: Any, resource: str | None) -> bool:
        raise RuntimeError("secret internals")

    app = await make_app(authorizer=broken)
    async with asgi_client(app, raise_app_exceptions=False) as client:
        response = await client.get("/api/processes")
    body = problem(response, 500)
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert body["title"] == "Internal Server Error"


async def test_api_token(make_app: AppFactory, settings: AppSettings) -> None:
    secured = settings.model_copy(update={"API_TOKEN": SecretStr("s3cret")})
    async with asgi_client(await make_app(settings=secured)) as client:
        for path in ("/api/processes", "/api/workflows", "/metrics", "/api/openapi.json", "/nowhere"):
            response = await client.get(path)
            problem(response, 401)
            assert response.headers["WWW-Authenticate"] == "Bearer"
        problem(await client.get("/api/processes", headers={"Authorization": "Bearer wrong"}), 401)
        problem(await client.get("/api/processes", headers={"Authorization": "Basic s3cret"}), 401)
        assert (await client.get("/api/health")).status_code == 200
        ok = await client.get("/api/processes", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        started = await client.post("/api/processes/tf_simple", json=[{}], headers={"Authorization": "bearer s3cret"})
        assert started.status_code == 201


async def test_json_this_server_cannot_store_is_a_400(client: httpx.AsyncClient) -> None:
    """Valid JSON that fits the schema but that PostgreSQL's jsonb cannot hold is refused as such (400), apart from
    a body that is not JSON at all (422)."""
    for body in (b'[{"x": "\\ud800"}]', b'[{"x": 1e400}]'):
        assert "cannot store" in problem(await client.post("/api/processes/tf_simple", content=body), 400)["detail"]
    problem(await client.post("/api/processes/tf_simple", content=b"[{"), 422)
