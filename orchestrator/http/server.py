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

import structlog
import uvicorn

from orchestrator import services
from orchestrator.dsl.workflow import import_workflow_modules
from orchestrator.exceptions import SettingsError
from orchestrator.http.app import create_app
from orchestrator.http.context import AppContext
from orchestrator.settings import AppSettings

logger = structlog.get_logger(__name__)

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
        first = next((_url(s.getsockname()) for server in self.servers for s in server.sockets), None)
        if first is not None:
            print(f"dashboard: {first}/ (open it in a browser)", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutting down; a drained stop is a clean exit (status 0) here.
        self._captured_signals.clear()
        hub = self.ctx.hub
        if self.loop is not None and hub is not None:
            self.loop.call_soon_threadsafe(hub.close_subscriptions)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bind every address of `host` (as uvicorn would), so that a bad --host or a busy --port is one line before
    the app starts, not an error logged after it started and stopped again."""
    where = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SettingsError(f"cannot listen on {where}: {exc.strerror}; correct --host") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SettingsError(f"cannot listen on {where}: {exc.strerror}; choose another --port or --host") from exc
    return sockets


def serve(settings: AppSettings, *, host: str, port: int) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean shutdown, 3 when the app could not start.

    What a user can get wrong (database, workflow modules, address) is checked before the app starts, and raises
    SettingsError or InvalidWorkflowError with one line."""
    if settings.DATABASE_URI:
        asyncio.run(services.ensure_database_reachable(settings.DATABASE_URI))
    import_workflow_modules(settings.WORKFLOW_MODULES)
    sockets = _listen(host, port)
    if not settings.WORKFLOW_MODULES:
        logger.warning(
            "no workflow module is loaded: no process can be started or run by this server; "
            "pass --workflows MODULE,... or set WORKFLOW_MODULES"
        )
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
    server.run(sockets)
    return 0 if server.started else STARTUP_FAILED
