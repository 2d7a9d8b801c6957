"""The engine page, starting a workflow from its form, and the dashboard behind API_TOKEN: login, session
cookie, CSRF, in a real browser."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from playwright.async_api import expect
from pydantic import SecretStr
from support.browser import Dashboard

from orchestrator.settings import AppSettings

TOKEN = "s3cret-token"


async def test_engine_is_paused_and_unpaused(open_dashboard: Callable[..., Awaitable[Dashboard]]) -> None:
    d = await open_dashboard()
    page = d.page
    await page.goto(d.url + "/engine")
    await expect(page.locator("#engine-state")).to_have_text("RUNNING")
    await page.get_by_role("button", name="Pause the engine").click()
    await expect(page.locator("#engine-state")).to_have_text("PAUSED")
    async with httpx.AsyncClient(base_url=d.url) as http:
        assert (await http.get("/api/settings/status")).json()["global_status"] == "PAUSED"
        refused = await http.post("/api/processes/tf_simple", json=[{}])
        assert refused.status_code == 503
    await page.get_by_role("button", name="Unpause the engine").click()
    await expect(page.locator("#engine-state")).to_have_text("RUNNING")
    await expect(page.locator('[role="status"]')).to_have_text("Engine unpaused.")
    assert d.problems == []


async def test_a_workflow_is_started_from_its_two_page_initial_form(
    open_dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    d = await open_dashboard()
    page = d.page
    await page.goto(d.url + "/workflows")
    await page.locator('a[href="/workflows/tf_two_pages"]').click()
    await page.get_by_label("Size").fill("2")
    await page.get_by_role("button", name="Start").click()
    await page.get_by_label("Name").fill("Grace")
    await page.get_by_role("button", name="Start").click()
    await expect(page.locator('[role="status"]')).to_have_text("Started.")
    await expect(page.locator("h1")).to_contain_text("completed")
    await expect(page.locator(".state")).to_contain_text("hello Grace x1 size 2")
    assert d.problems == []


async def test_login_with_the_token_gives_a_session_and_forms_need_the_csrf_token(
    open_dashboard: Callable[..., Awaitable[Dashboard]], settings: AppSettings
) -> None:
    d = await open_dashboard(settings=settings.model_copy(update={"API_TOKEN": SecretStr(TOKEN)}))
    page = d.page
    await page.goto(d.url + "/engine")
    await expect(page).to_have_url(d.url + "/login?next=%2Fengine")
    await page.get_by_label("API token").fill("wrong")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#token-error")).to_have_text("That is not the API token.")
    await page.get_by_label("API token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(d.url + "/engine")
    await expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")  # the websocket too

    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["orchestrator_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    jar = {"orchestrator_session": session["value"], "orchestrator_csrf": cookies["orchestrator_csrf"]["value"]}
    async with httpx.AsyncClient(base_url=d.url, cookies=jar) as http:
        assert (await http.get("/api/settings/status")).status_code == 200  # reads with the session
        # A state change needs the bearer token in the API, and the form's CSRF token in the dashboard:
        assert (await http.put("/api/settings/status", json={"global_lock": True})).status_code == 401
        forged = await http.post("/engine", data={"pause": "true"})
        assert forged.status_code == 403
        assert (await http.get("/api/settings/status")).json()["global_status"] == "RUNNING"
    async with httpx.AsyncClient(base_url=d.url) as anonymous:
        assert (await anonymous.get("/api/processes")).status_code == 401

    await page.get_by_role("button", name="Pause the engine").click()
    await expect(page.locator("#engine-state")).to_have_text("PAUSED")
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(d.url + "/login")
    await page.goto(d.url + "/")
    await expect(page).to_have_url(d.url + "/login?next=%2F")
    assert d.problems == []
