"""Helpers of the HTTP tests: an httpx client over ASGI, starting and waiting on processes through the API,
problem responses, and authorizers that refuse."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.types import ASGIApp

from orchestrator.dsl.types import RUN_ENDED_STATUSES
from orchestrator.http.auth import RequestAuthorizer
from orchestrator.runtime.orchestrator import Orchestrator
from support.waiting import wait_until

AppFactory = Callable[..., Awaitable[Starlette]]

PROBLEM = "application/problem+json"


def asgi_client(app: ASGIApp, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, **kwargs), base_url="http://test")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    return body


async def start(
    client: httpx.AsyncClient, key: str, pages: Any = None, headers: dict[str, str] | None = None, **params: str
) -> str:
    body = [{}] if pages is None else pages
    response = await client.post(f"/api/processes/{key}", json=body, params=params, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def wait_status(
    client: httpx.AsyncClient, pid: str, statuses: Any = RUN_ENDED_STATUSES, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll GET /api/processes/{pid} until its status is one of `statuses`."""
    process: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal process
        response = await client.get(f"/api/processes/{pid}")
        assert response.status_code == 200, response.text
        process = response.json()
        return process["last_status"] in statuses

    await wait_until(reached, timeout, f"process {pid} to reach one of {sorted(statuses)}", interval=0.01)
    return process


async def counts(orch: Orchestrator) -> tuple[int, int, int]:
    """Rows in processes, process_steps and input_states: to check that a refused request wrote nothing."""
    row = await orch.store.pool.fetchrow(
        "SELECT (SELECT count(*) FROM processes), (SELECT count(*) FROM process_steps),"
        " (SELECT count(*) FROM input_states)"
    )
    assert row is not None
    return row[0], row[1], row[2]


def deny(*actions: str) -> RequestAuthorizer:
    """An authorizer that refuses the given actions and records every question it is asked."""

    async def authorizer(conn: Any, action: str, resource: str | None) -> bool:
        asked.append((action, resource))
        return action not in actions

    asked: list[tuple[str, str | None]] = []
    authorizer.asked = asked  # type: ignore[attr-defined]
    return authorizer


@dataclass
class Served:
    """`orchestrator serve` in a subprocess: its base URL, what it printed at startup, the process."""

    url: str
    banner: list[str]
    proc: subprocess.Popen[str]
    log: Path
