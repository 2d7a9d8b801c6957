"""`python docs/screenshots.py`: retake the dashboard's screenshots in docs/ (a dev tool, not in the wheel).

Runs the example workflows in a scratch database on the local PostgreSQL (dropped afterwards), serves the app,
and photographs its main pages with Debian's Chromium driven by Playwright, at 1280 px wide.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from playwright.async_api import async_playwright

from orchestrator import services
from orchestrator.http import create_app
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import load_settings

DOCS = Path(__file__).resolve().parent
ADMIN = os.environ.get("SCREENSHOT_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


async def _processes(orch: Orchestrator) -> dict[str, Any]:
    """A few processes in the statuses an operator meets: completed, suspended, failed, with branches, tasks."""
    ids: dict[str, Any] = {}
    for i, customer in enumerate(["ACME", "Globex", "Initech", "Umbrella", "Hooli", "Stark"]):
        pid = await services.start_process(
            "provision_port", [{"customer": customer, "speed_gbps": 10 * (i + 1)}], orchestrator=orch
        )
        await services.wait_for_process(pid, until="suspended", timeout=30, orchestrator=orch)
        if i < 3:
            await services.resume_process(pid, [{"approved": True}], orchestrator=orch)
        elif i == 3:
            await services.resume_process(pid, [{"approved": False, "comment": "no budget"}], orchestrator=orch)
            ids["failed"] = pid
        else:
            ids["suspended"] = pid
    await services.set_note(ids["suspended"], "customer asked for a quote first", orchestrator=orch)
    ids["parallel"] = await services.start_process(
        "provision_port_parallel", [{"customer": "Wayne", "speed_gbps": 100}], orchestrator=orch
    )
    for _ in range(2):
        await services.start_process("task_three_steps", [{}], orchestrator=orch)
    await services.create_schedule("task_three_steps", "cron", {"hour": 2}, name="Nightly", orchestrator=orch)
    for pid in ids.values():
        await services.wait_for_process(pid, until={"completed", "failed", "suspended"}, timeout=30, orchestrator=orch)
    return ids


async def _shoot(base: str, ids: dict[str, Any]) -> None:
    pages = {
        "dashboard-processes.png": "/",
        "dashboard-process-suspended.png": f"/processes/{ids['suspended']}",
        "dashboard-process-failed.png": f"/processes/{ids['failed']}",
        "dashboard-process-branches.png": f"/processes/{ids['parallel']}",
        "dashboard-engine.png": "/engine",
    }
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        for name, path in pages.items():
            await page.goto(base + path)
            await page.wait_for_selector('#live-indicator[data-state="on"]')
            await page.screenshot(path=str(DOCS / name), full_page=path != "/")
            print(f"docs/{name}")
        await browser.close()


async def main() -> None:
    name = f"screenshots_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = ADMIN.rsplit("/", 1)[0] + f"/{name}"
        settings = load_settings(DATABASE_URI=dsn, WORKFLOW_MODULES=["orchestrator.examples.workflows"])
        async with Orchestrator(settings) as orch:
            ids = await _processes(orch)
            app = create_app(orchestrator=orch)
            config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio")
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await asyncio.sleep(0.05)
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                await _shoot(f"http://127.0.0.1:{port}", ids)
            finally:
                server.should_exit = True
                await serving
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
