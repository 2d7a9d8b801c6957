"""Browser fixtures: Debian's Chromium driven by Playwright (never Playwright's own browser download), on the
app served by a real uvicorn on an ephemeral port, with the test workflows and the dashboard's own."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from playwright.async_api import Browser, ConsoleMessage, async_playwright
from starlette.applications import Starlette
from support.browser import Dashboard
from support.http import AppFactory

from orchestrator.settings import AppSettings

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def settings(settings: AppSettings) -> AppSettings:
    return settings.model_copy(update={"WORKFLOW_MODULES": ["testflows", "dashboardflows"]})


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        await chromium.close()


FORM_REFUSED = "the server responded with a status of 400"
"""A form page with its errors next to the fields is a 400: expected where a test submits a bad form."""


def _problem(message: ConsoleMessage) -> bool:
    return message.type == "error" and FORM_REFUSED not in message.text


@pytest.fixture
async def open_dashboard(
    browser: Browser, make_app: AppFactory, serve_app: Callable[[Starlette], Awaitable[str]]
) -> AsyncIterator[Callable[..., Awaitable[Dashboard]]]:
    """`await open_dashboard(**create_app kwargs)`: the app served for real, and a fresh browser page on it."""
    contexts = []

    async def open_(**kwargs: object) -> Dashboard:
        url = await serve_app(await make_app(**kwargs))
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(10_000)
        dashboard = Dashboard(url, page)
        page.on("console", lambda m: dashboard.problems.append(m.text) if _problem(m) else None)
        page.on("pageerror", lambda e: dashboard.problems.append(str(e)))
        return dashboard

    yield open_
    for context in contexts:
        await context.close()
