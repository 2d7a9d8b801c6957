"""`orchestrator serve`: the app under uvicorn on uvloop.

On SIGTERM/SIGINT the live streams end first (websockets close, SSE responses finish), so that uvicorn is not left
waiting on connections that never end; then in-flight requests complete, and the lifespan closes the Orchestrator,
which drains the executor.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import socket
from types import FrameType

import uvicorn

from orchestrator import services
from orchestrator.http.app import create_app
from orchestrator.http.context import AppContext
from orchestrator.settings import AppSettings

STARTUP_FAILED = 3


def _url(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ctx: AppContext) -> None:
        super().__init__(config)
        self.ctx = ctx
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        self.loop = asyncio.get_running_loop()
        where = ", ".join(_url(s.getsockname()) for server in self.servers for s in server.sockets)
        location = self.ctx.orchestrator.location
        print(f"orchestrator API listening on {where}", flush=True)
        print(f"executor: {self.ctx.settings.EXECUTOR.value}", flush=True)
        print(f"database: {location.describe() if location else '?'}", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutting down; a drained stop is a clean exit (status 0) here.
        self._captured_signals.clear()
        hub = self.ctx.hub
        if self.loop is not None and hub is not None:
            self.loop.call_soon_threadsafe(hub.close_subscriptions)


def serve(settings: AppSettings, *, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean shutdown, 3 when the app could not start."""
    if settings.DATABASE_URI:
        asyncio.run(services.ensure_database_reachable(settings.DATABASE_URI))
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        ws="websockets-sansio",
        ws_max_size=settings.MAX_BODY_BYTES,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=max(1, math.ceil(settings.SHUTDOWN_TIMEOUT_SECONDS)),
    )
    server = _Server(config, app.state.context)
    server.run()
    return 0 if server.started else STARTUP_FAILED
