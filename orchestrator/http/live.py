"""Live updates, fed by the event hub: orchestrator-core's `invalidateCache` websocket, and Server-Sent Events of one
process's changes for clients that want the events themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from orchestrator import services
from orchestrator.dsl import jsonutil
from orchestrator.dsl.types import ProcessStatus
from orchestrator.exceptions import ProcessNotFoundError
from orchestrator.http.auth import WS_AUTH_SUBPROTOCOL, reject_websocket, websocket_token
from orchestrator.http.context import context
from orchestrator.http.hub import Event, Subscription
from orchestrator.http.params import PROCESS_ID, path_uuid
from orchestrator.http.routing import Api, Reply

api = Api("live updates")

WEBSOCKET_PATH = "/api/ws/events"
KEEPALIVE_SECONDS = 15.0
STREAM_ENDS = frozenset({ProcessStatus.COMPLETED, ProcessStatus.ABORTED, "deleted"})
"""After these a process never changes again, so its event stream ends."""


def _invalidate(value: dict[str, Any]) -> dict[str, Any]:
    return {"name": "invalidateCache", "value": value}


PROCESS_LIST = _invalidate({"type": "processes", "id": "LIST"})
STATUS_COUNTS = _invalidate({"type": "processStatusCounts"})
ENGINE_STATUS = _invalidate({"type": "engineStatus"})


def invalidations(event: Event) -> list[dict[str, Any]]:
    """orchestrator-core's messages for one event: a process broadcast (LIST, then the process), followed by the
    status counts when the status changed (every event but an intermediate step of a running process)."""
    if event.get("engine"):
        return [ENGINE_STATUS]
    if event.get("reconnected"):
        return [PROCESS_LIST, STATUS_COUNTS, ENGINE_STATUS]
    pid = event.get("pid")
    if not isinstance(pid, str):
        return []
    messages = [PROCESS_LIST, _invalidate({"type": "processes", "id": pid})]
    status = event.get("status")
    if status is not None and not (status == ProcessStatus.RUNNING and "step" in event):
        messages.append(STATUS_COUNTS)
    return messages


async def events_websocket(websocket: WebSocket) -> None:
    """Cache invalidations for every process change; answers "__ping__" with "__pong__"."""
    well_formed, _ = websocket_token(websocket.scope)
    if not well_formed:
        await websocket.close(1002)
        return
    ctx = context(websocket)
    if not await ctx.authorizer(websocket, "read", None):
        await reject_websocket(websocket.scope, websocket.receive, websocket.send, 403, "Not authorized")
        return
    subscription = ctx.events.subscribe()
    forwarder: asyncio.Task[None] | None = None
    try:
        await websocket.accept(subprotocol=WS_AUTH_SUBPROTOCOL if websocket.scope.get("subprotocols") else None)
        forwarder = asyncio.create_task(_forward(websocket, subscription))
        while True:
            if await websocket.receive_text() == "__ping__":
                await websocket.send_text("__pong__")
    except WebSocketDisconnect:
        pass
    finally:
        ctx.events.unsubscribe(subscription)
        if forwarder is not None:
            forwarder.cancel()
            with suppress(asyncio.CancelledError):
                await forwarder


async def _forward(websocket: WebSocket, subscription: Subscription) -> None:
    try:
        while (event := await subscription.get()) is not None:
            for message in invalidations(event):
                await websocket.send_text(jsonutil.dumps_str(message))
        # Dropped as too slow, or the server is stopping: "try again later".
        await websocket.close(1013)
    except (WebSocketDisconnect, RuntimeError):  # the client left meanwhile
        return


class ProcessEvent(BaseModel):
    """One Server-Sent Event of the stream (OpenAPI 3.1 describes a stream by its events)."""

    event: Literal["process"]
    data: str = Field(
        description="A JSON object: `pid` and what changed (`status`, `step`, `progress`, `note`)",
        json_schema_extra={"contentMediaType": "application/json"},
    )


def _sse(event: Event) -> bytes:
    return b"event: process\ndata: " + jsonutil.dumps(event) + b"\n\n"


async def _snapshot(request: Request, pid: UUID) -> Event:
    summary = await services.process_summary(pid, orchestrator=context(request).orchestrator)
    if summary is None:
        return {"pid": str(pid), "status": "deleted"}
    return {"pid": str(pid), "status": summary["last_status"], "step": summary["last_step"]}


async def _events_of(request: Request, pid: UUID, subscription: Subscription) -> AsyncIterator[Event | None]:
    """One process's events (a fresh snapshot after a reconnect); None after KEEPALIVE_SECONDS without any."""
    while True:
        try:
            event = await subscription.get(timeout=KEEPALIVE_SECONDS)
        except TimeoutError:
            yield None
            continue
        if event is None:
            return
        if event.get("reconnected"):
            event = await _snapshot(request, pid)
        if event.get("pid") == str(pid):
            yield event


@api.operation(
    "GET",
    "/api/processes/{process_id}/events",
    summary="Stream a process's changes (Server-Sent Events)",
    params=[PROCESS_ID],
    replies=[
        Reply(200, "`event: process` messages; the first is the current status", ProcessEvent, "text/event-stream"),
        Reply(404, "No such process"),
    ],
)
async def process_events(request: Request) -> Response:
    """Each message's data is a JSON object with `pid` and what changed (`status`, `step`, `progress`, `note`).
    The first message is the process's current status; after a lost database connection a fresh one follows.
    The stream ends once the process is completed, aborted or deleted; a comment line keeps idle streams open."""
    pid = path_uuid(request, "process_id")
    ctx = context(request)
    await ctx.authorize(request, "read", str(pid))
    hub = ctx.events
    subscription = hub.subscribe()  # before the snapshot, so that no change falls in between
    try:
        first = await _snapshot(request, pid)
        if first["status"] == "deleted":
            raise ProcessNotFoundError(pid)
    except BaseException:
        hub.unsubscribe(subscription)
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield _sse(first)
            if first["status"] in STREAM_ENDS:
                return
            async for event in _events_of(request, pid, subscription):
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(event)
                if event.get("status") in STREAM_ENDS:
                    return
        finally:
            hub.unsubscribe(subscription)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
