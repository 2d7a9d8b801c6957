"""Live updates over a real uvicorn server: the invalidateCache websocket (a real websockets client) and the SSE
stream (httpx streaming), both fed by PostgreSQL LISTEN/NOTIFY; and the end-to-end scenario over HTTP only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import websockets
from pydantic import SecretStr
from starlette.applications import Starlette
from support.http import AppFactory, asgi_client, counts, deny, problem, wait_status
from websockets.asyncio.client import ClientConnection

from orchestrator.http import live
from orchestrator.http.hub import EventHub
from orchestrator.persistence.listener import Listener
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings

Serve = Callable[[Starlette], Awaitable[str]]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/api/ws/events"


class Collector:
    """Reads a websocket's messages in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.messages: list[Any] = []
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self.messages.append(json.loads(raw) if raw != "__pong__" else raw)

    def values(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if isinstance(m, dict) and m.get("name") == "invalidateCache"]

    async def wait_for(self, value: dict[str, Any], after: int = 0, timeout: float = 10.0) -> int:
        """Index of the first message `value` at or after message `after`."""
        async with asyncio.timeout(timeout):
            while True:
                values = self.values()
                for i in range(after, len(values)):
                    if values[i] == value:
                        return i
                await asyncio.sleep(0.01)


async def read_sse(response: httpx.Response, events: list[dict[str, Any]]) -> None:
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            assert kind == "process"
            events.append(json.loads(line.removeprefix("data: ")))


async def test_end_to_end_over_http(app: Starlette, serve_app: Serve, orch: Orchestrator) -> None:
    """start → suspended → a bad resume (nothing written, nothing announced) → a good resume → completed."""
    base = await serve_app(app)
    async with websockets.connect(ws_url(base)) as ws, httpx.AsyncClient(base_url=base) as http:
        live = Collector(ws)
        await ws.send("__ping__")
        async with asyncio.timeout(5):
            while "__pong__" not in live.messages:
                await asyncio.sleep(0.01)

        response = await http.post("/api/processes/tf_input", json=[{"size": 3}])
        assert response.status_code == 201
        pid = response.json()["id"]
        sse_events: list[dict[str, Any]] = []
        async with http.stream("GET", f"/api/processes/{pid}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            reader = asyncio.create_task(read_sse(stream, sse_events))

            await wait_status(http, pid, {"suspended"})
            suspended_at = await live.wait_for({"type": "processes", "id": pid})
            await live.wait_for({"type": "processStatusCounts"}, suspended_at)
            await asyncio.sleep(0.2)
            before, seen = await counts(orch), len(live.messages)

            bad = await http.put(f"/api/processes/{pid}/resume", json=[{"count": "lots"}])
            problem(bad, 400)
            await asyncio.sleep(0.3)
            assert await counts(orch) == before
            assert len(live.messages) == seen  # nothing changed, so nothing was announced
            assert (await http.get(f"/api/processes/{pid}")).json()["last_status"] == "suspended"

            good = await http.put(f"/api/processes/{pid}/resume", json=[{"name": "eve"}])
            assert good.status_code == 204
            process = await wait_status(http, pid)
            assert process["last_status"] == "completed"
            async with asyncio.timeout(10):
                await reader  # the stream ends by itself once the process completes

        statuses = [e["status"] for e in sse_events]
        assert "suspended" in statuses
        assert statuses.index("suspended") < statuses.index("resumed") < len(statuses) - 1
        assert statuses[-1] == "completed"
        assert all(e["pid"] == pid for e in sse_events)
        assert {"pid": pid, "status": "running", "step": "Use name"} in sse_events

        values = live.values()
        resumed = await live.wait_for({"type": "processes", "id": pid}, seen)
        assert values[resumed - 1] == {"type": "processes", "id": "LIST"}  # LIST, then the process
        await live.wait_for({"type": "processStatusCounts"}, resumed)
        live.task.cancel()


async def test_websocket_engine_status_and_delete(app: Starlette, serve_app: Serve) -> None:
    base = await serve_app(app)
    async with websockets.connect(ws_url(base)) as ws, httpx.AsyncClient(base_url=base) as http:
        live = Collector(ws)
        await http.put("/api/settings/status", json={"global_lock": True})
        await live.wait_for({"type": "engineStatus"})
        await http.put("/api/settings/status", json={"global_lock": False})

        pid = (await http.post("/api/processes/tf_task_fail", json=[{}])).json()["id"]
        await wait_status(http, pid)
        mark = len(live.values())
        assert (await http.delete(f"/api/processes/{pid}")).status_code == 204
        at = await live.wait_for({"type": "processes", "id": pid}, mark)
        await live.wait_for({"type": "processStatusCounts"}, at)
        live.task.cancel()


async def test_sse_errors(client: httpx.AsyncClient) -> None:
    problem(await client.get("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11/events"), 404)
    problem(await client.get("/api/processes/nope/events"), 422)


async def test_listener_reconnects(app: Starlette, serve_app: Serve, orch: Orchestrator) -> None:
    base = await serve_app(app)
    async with websockets.connect(ws_url(base)) as ws, httpx.AsyncClient(base_url=base) as http:
        live = Collector(ws)
        listening = orch.store.listener.server_pid
        assert listening is not None
        assert await orch.store.pool.fetchval("SELECT pg_terminate_backend($1)", listening)
        await live.wait_for({"type": "processStatusCounts"})  # "you may have missed changes": refetch
        pid = (await http.post("/api/processes/tf_simple", json=[{}])).json()["id"]
        await live.wait_for({"type": "processes", "id": pid})
        live.task.cancel()


async def test_slow_subscribers_are_dropped(database_uri: str) -> None:
    hub = EventHub(Listener(database_uri), queue_size=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    for n in range(3):
        hub.publish({"n": n})
        assert await fast.get() == {"n": n}
    assert slow.closed
    assert [await slow.get(), await slow.get(), await slow.get()] == [{"n": 0}, {"n": 1}, None]
    hub.publish({"n": 3})
    assert await fast.get() == {"n": 3}
    hub.close_subscriptions()
    assert await fast.get() is None


async def test_streams_end_when_the_hub_closes(app: Starlette, serve_app: Serve) -> None:
    base = await serve_app(app)
    async with websockets.connect(ws_url(base)) as ws:
        await asyncio.sleep(0.05)
        app.state.context.events.close_subscriptions()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013


@pytest.fixture
async def secured_url(make_app: AppFactory, settings: AppSettings, serve_app: Serve) -> str:
    app = await make_app(settings=settings.model_copy(update={"API_TOKEN": SecretStr("s3cret")}))
    return ws_url(await serve_app(app))


async def test_websocket_token(secured_url: str) -> None:
    async with websockets.connect(secured_url, subprotocols=["base64.bearer.token", "s3cret"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "base64.bearer.token"
        await ws.send("__ping__")
        assert await ws.recv() == "__pong__"
    async with websockets.connect(f"{secured_url}?token=s3cret") as ws:
        await ws.send("__ping__")
        assert await ws.recv() == "__pong__"


async def test_websocket_without_a_valid_token(secured_url: str) -> None:
    for url, subprotocols in [
        (secured_url, None),
        (f"{secured_url}?token=nope", None),
        (secured_url, ["base64.bearer.token", "nope"]),
    ]:
        async with websockets.connect(url, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
            error = json.loads(await ws.recv())
            assert error == {
                "error": {"status_code": 401, "detail": "A valid bearer token is required", "headers": None}
            }
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008


async def test_websocket_malformed_subprotocol(secured_url: str, app: Starlette, serve_app: Serve) -> None:
    for url in (secured_url, ws_url(await serve_app(app))):
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(url, subprotocols=["chat"]):  # type: ignore[list-item]
                pass


async def test_websocket_denied_by_the_authorizer(make_app: AppFactory, serve_app: Serve) -> None:
    base = await serve_app(await make_app(authorizer=deny("read")))
    async with websockets.connect(ws_url(base)) as ws:
        assert json.loads(await ws.recv())["error"]["status_code"] == 403
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    async with asgi_client(await make_app(authorizer=deny("read"))) as client:
        problem(await client.get("/api/processes"), 403)


async def test_sse_keepalive_and_snapshot_after_reconnect(
    app: Starlette, serve_app: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "KEEPALIVE_SECONDS", 0.05)
    base = await serve_app(app)
    async with httpx.AsyncClient(base_url=base) as http:
        pid = (await http.post("/api/processes/tf_input", json=[{"size": 1}])).json()["id"]
        await wait_status(http, pid, {"suspended"})
        async with http.stream("GET", f"/api/processes/{pid}/events") as stream:
            lines = stream.aiter_lines()
            async with asyncio.timeout(5):
                assert await anext(lines) == "event: process"
                assert json.loads((await anext(lines)).removeprefix("data: "))["status"] == "suspended"
                while await anext(lines) != ": keep-alive":
                    pass
                app.state.context.events.publish({"reconnected": True})  # as after a lost LISTEN connection
                while not (line := await anext(lines)).startswith("data: "):
                    pass
            assert json.loads(line.removeprefix("data: ")) == {"pid": pid, "status": "suspended", "step": "Ask name"}
