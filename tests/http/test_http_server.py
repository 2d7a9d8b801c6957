"""`orchestrator serve` for real (uvicorn on uvloop, in a subprocess), and a script written for orchestrator-core."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import requests
from starlette.applications import Starlette
from support.http import Served


def core_script(base: str) -> dict[str, Any]:
    """Written for orchestrator-core's REST API: start with a list of pages, poll, resume with a list of pages."""
    session = requests.Session()
    assert session.get(f"{base}/api/health/").json() == "OK"
    response = session.post(f"{base}/api/processes/tf_input", json=[{"size": 2}])
    response.raise_for_status()
    pid = response.json()["id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        process = session.get(f"{base}/api/processes/{pid}").json()
        if process["last_status"] == "suspended":
            session.put(f"{base}/api/processes/{pid}/resume", json=[{"name": "core", "count": 3}]).raise_for_status()
        elif process["last_status"] in ("completed", "failed", "aborted"):
            listed = session.get(f"{base}/api/processes/", params={"filter": f"processId,{pid}"}).json()
            assert [p["last_status"] for p in listed] == [process["last_status"]]
            return dict(process)
        time.sleep(0.02)
    raise TimeoutError(pid)


async def test_orchestrator_core_script(app: Starlette, serve_app: Callable[[Starlette], Awaitable[str]]) -> None:
    process = await asyncio.to_thread(core_script, await serve_app(app))
    assert process["last_status"] == "completed"
    assert process["current_state"]["greeting"] == "hello core x3 size 2"


async def test_serve_prints_where_and_stops_gracefully_on_sigterm(
    serve_command: Callable[..., Served], database_uri: str
) -> None:
    served = serve_command(TF_SLOW_SECONDS="1.0")
    assert served.banner[1] == "executor: threadpool"
    assert served.banner[2].startswith("database: PostgreSQL at postgresql://postgres@127.0.0.1")
    assert served.proc.stdout is not None
    assert served.proc.stdout.readline().strip() == f"dashboard: {served.url}/ (open it in a browser)"
    async with httpx.AsyncClient(base_url=served.url) as http:
        assert (await http.get("/api/health")).json() == "OK"
        pid = (await http.post("/api/processes/tf_slow", json=[{}])).json()["id"]
        async with http.stream("GET", f"/api/processes/{pid}/events") as stream:
            lines = stream.aiter_lines()
            async with asyncio.timeout(5):
                while "running" not in await anext(lines):
                    pass
            served.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                async for _ in lines:  # the stream ends instead of holding the shutdown up
                    pass
    assert await asyncio.to_thread(served.proc.wait, 15) == 0
    conn = await asyncpg.connect(database_uri)
    try:
        status = await conn.fetchval("SELECT last_status FROM processes WHERE pid = $1", pid)
        steps = await conn.fetch("SELECT name, status FROM process_steps WHERE pid = $1 ORDER BY seq", pid)
    finally:
        await conn.close()
    assert status == "resumed"  # the running step finished; the rest waits for the next start
    assert [tuple(s) for s in steps] == [("Start", "success"), ("Slow", "success")]
    assert "Traceback" not in served.log.read_text()


def test_uvicorn_main_app(worker_env: dict[str, str], tmp_path: Path) -> None:
    """What orchestrator-core users run: `uvicorn main:app` with `app = create_app()` (settings from the env)."""
    (tmp_path / "main.py").write_text("from orchestrator.http import create_app\n\napp = create_app()\n")
    command = [sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(tmp_path), "--port", "0"]
    proc = subprocess.Popen([*command, "--ws", "websockets-sansio"], env=worker_env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if match := re.search(r"Uvicorn running on (http://\S+)", line):
                break
        else:
            raise AssertionError("uvicorn did not start")
        base = match.group(1)
        assert requests.get(f"{base}/api/health", timeout=5).json() == "OK"
        keys = {w["key"] for w in requests.get(f"{base}/api/workflows", timeout=5).json()}
        assert "tf_simple" in keys
    finally:
        proc.terminate()
        proc.wait(15)
        assert proc.stderr is not None
        proc.stderr.close()
