"""`/api/health`: 200 "OK" while the database answers; the only endpoint that needs no token."""

from __future__ import annotations

import asyncio

import structlog
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http.context import context
from orchestrator.http.problems import Problem
from orchestrator.http.routing import Api, Reply, json_reply

logger = structlog.get_logger(__name__)

api = Api("health")

TIMEOUT_SECONDS = 2.0


@api.operation(
    "GET",
    "/api/health",
    summary="Is the database reachable?",
    replies=[Reply(200, 'The JSON string "OK"', str), Reply(503, "The database does not answer")],
)
async def health(request: Request) -> Response:
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await services.database_answers(orchestrator=context(request).orchestrator)
    except Exception as exc:  # any failure to answer means unhealthy, and is not this request's fault
        logger.warning("health check failed", error=repr(exc))
        return Problem(503, "The database does not answer")
    return json_reply(str, "OK")
