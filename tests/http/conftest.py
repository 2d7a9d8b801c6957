"""HTTP fixtures: the app on the test's Orchestrator, an httpx client over ASGI, and a real uvicorn server (their
helpers are in `support.http`)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from support.http import AppFactory, Served, asgi_client

from orchestrator.http import create_app
from orchestrator.runtime.orchestrator import Orchestrator


@pytest.fixture
async def make_app(orch: Orchestrator) -> AsyncIterator[AppFactory]:
    """`await make_app(authorizer=..., settings=...)`: an app on the test's Orchestrator, its lifespan started."""
    stack: list[Any] = []

    async def make(**kwargs: Any) -> Starlette:
        app = create_app(orchestrator=orch, **kwargs)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        stack.append(lifespan)
        return app

    yield make
    for lifespan in reversed(stack):
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def app(make_app: AppFactory) -> Starlette:
    return await make_app()


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[Starlette], Awaitable[str]]]:
    """`await serve_app(app)`: run the app under a real uvicorn on an ephemeral port; returns its base URL."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: Starlette) -> str:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, ws="websockets-sansio", lifespan="off", log_config=None, access_log=False
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


@pytest.fixture
def serve_command(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """`serve_command(**env)`: run `orchestrator serve --port 0` and wait until it listens."""
    started: list[Served] = []

    def start(**env: str) -> Served:
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
                env={**worker_env, "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING", **env},
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert proc.stdout is not None
        banner = [proc.stdout.readline().strip() for _ in range(3)]
        match = re.search(r"listening on (http://\S+)", banner[0])
        assert match, f"{banner}\n{log.read_text()}"
        served = Served(match.group(1), banner, proc, log)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait()
        assert served.proc.stdout is not None
        served.proc.stdout.close()
