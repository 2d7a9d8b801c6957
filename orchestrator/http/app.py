"""`create_app()`: the Starlette application. Its lifespan opens the Orchestrator (or uses the one given, without
closing it) and the event hub; closing drains the executor (running steps finish, the rest stays resumable)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute

from orchestrator.http import docs, engine_settings, health, live, metrics, openapi, processes, schedules, workflows
from orchestrator.http.auth import BearerTokenMiddleware, RequestAuthorizer, allow_all
from orchestrator.http.context import AppContext
from orchestrator.http.hub import EventHub
from orchestrator.http.limits import BodyLimitMiddleware
from orchestrator.http.problems import HANDLERS
from orchestrator.http.routing import build_routes
from orchestrator.services import Orchestrator
from orchestrator.settings import AppSettings, load_settings

APIS = (
    processes.api,
    live.api,
    workflows.api,
    schedules.api,
    engine_settings.api,
    health.api,
    metrics.api,
    openapi.api,
)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    ctx: AppContext = app.state.context
    if ctx.given is None:
        ctx.opened = await Orchestrator(ctx.settings).open()
    try:
        ctx.hub = EventHub(ctx.orchestrator.store.listener)
        await ctx.hub.start()
        try:
            yield
        finally:
            await ctx.hub.stop()
    finally:
        if ctx.opened is not None:
            await ctx.opened.close()
            ctx.opened = None


def create_app(
    settings: AppSettings | None = None,
    *,
    orchestrator: Orchestrator | None = None,
    authorizer: RequestAuthorizer | None = None,
) -> Starlette:
    """The API app. `uvicorn main:app` with `app = create_app()` reads the settings from the environment."""
    settings = settings or (orchestrator.settings if orchestrator is not None else load_settings())
    operations = [op for group in APIS for op in group.operations]
    middleware = [Middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)]
    if settings.API_TOKEN is not None:
        middleware.insert(0, Middleware(BearerTokenMiddleware, token=settings.API_TOKEN.get_secret_value()))
    app = Starlette(
        routes=[
            *build_routes(operations),
            WebSocketRoute(live.WEBSOCKET_PATH, live.events_websocket),
            *docs.ROUTES,
        ],
        middleware=middleware,
        exception_handlers=dict(HANDLERS),
        lifespan=lifespan,
    )
    app.state.context = AppContext(settings, authorizer or allow_all, operations, orchestrator)
    return app
