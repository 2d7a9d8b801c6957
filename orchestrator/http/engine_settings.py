"""`/api/settings`: pause and unpause the engine, and the worker status (from heartbeats and leases in the
database, never from broker introspection)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http.context import context
from orchestrator.http.models import EngineLock, EngineStatus, WorkerStatus
from orchestrator.http.params import json_body
from orchestrator.http.routing import Api, Body, Reply, json_reply

api = Api("settings")


@api.operation(
    "GET",
    "/api/settings/status",
    summary="The engine's status",
    replies=[Reply(200, "PAUSING while paused with processes still running", EngineStatus)],
)
async def get_engine_status(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    return json_reply(EngineStatus, await services.engine_status(orchestrator=ctx.orchestrator))


@api.operation(
    "PUT",
    "/api/settings/status",
    summary="Pause or unpause the engine",
    body=Body(EngineLock, "`global_lock: true` pauses: running processes stop before their next step"),
    replies=[Reply(200, "The engine's status after the change", EngineStatus)],
)
async def set_engine_status(request: Request) -> Response:
    """Unpausing dispatches everything that waited meanwhile."""
    ctx = context(request)
    await ctx.authorize(request, "engine")
    lock: EngineLock = await json_body(request, EngineLock)
    return json_reply(EngineStatus, await services.set_engine_lock(lock.global_lock, orchestrator=ctx.orchestrator))


@api.operation(
    "GET",
    "/api/settings/worker-status",
    summary="Executor type, workers online, queued and running jobs",
    replies=[Reply(200, "The worker status", WorkerStatus)],
)
async def worker_status(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    return json_reply(WorkerStatus, await services.worker_status(orchestrator=ctx.orchestrator))
