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
    assert set(shared.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST", "PATCH", "DELETE"}


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
