"""The process list in a real browser: live updates from the event stream, filters, paging."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from playwright.async_api import expect
from support.browser import Dashboard


async def test_a_started_process_appears_live_and_filters_narrow_the_list(
    open_dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    d = await open_dashboard()
    page = d.page
    await page.goto(d.url + "/")
    await expect(page.locator("#live-indicator")).to_have_attribute("data-state", "on")
    await expect(page.locator("#process-rows")).to_contain_text("No processes match.")
    async with httpx.AsyncClient(base_url=d.url) as http:
        simple = (await http.post("/api/processes/tf_simple", json=[{}])).json()["id"]
        waiting = (await http.post("/api/processes/tf_input", json=[{"size": 3}])).json()["id"]
    rows = page.locator("#process-rows tbody tr")
    await expect(rows).to_have_count(2)  # without a reload: the event stream refreshed the rows
    await expect(page.locator(f'tr[data-pid="{simple}"]')).to_contain_text("completed")
    await expect(page.locator(f'tr[data-pid="{waiting}"]')).to_contain_text("suspended")

    await page.select_option("#status", "suspended")
    await expect(rows).to_have_count(1)
    await expect(page.locator(f'tr[data-pid="{waiting}"]')).to_be_visible()
    assert "status=suspended" in page.url  # the view is in the address, to bookmark or share

    await page.select_option("#status", "")
    await page.fill("#q", waiting[:8])
    await expect(rows).to_have_count(1)
    await expect(page.locator(f'tr[data-pid="{waiting}"]')).to_be_visible()
    await page.fill("#q", "tf_simp")
    await expect(page.locator(f'tr[data-pid="{simple}"]')).to_be_visible()
    await expect(rows).to_have_count(1)

    await page.reload()  # the filter survives a reload, rendered by the server
    await expect(page.locator("#q")).to_have_value("tf_simp")
    await expect(rows).to_have_count(1)
    time = page.locator(f'tr[data-pid="{simple}"] time').first
    await expect(time).to_have_attribute("title", re.compile(r"Z \(UTC\)$"))
    assert d.problems == []


async def test_pages_fit_1280_and_800_pixels_and_work_from_the_keyboard(
    open_dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    d = await open_dashboard()
    page = d.page
    async with httpx.AsyncClient(base_url=d.url) as http:
        pid = (await http.post("/api/processes/tf_input", json=[{"size": 3}])).json()["id"]
        await http.patch(f"/api/processes/{pid}", json={"note": "a long note " * 40})
    for width in (1280, 800):
        await page.set_viewport_size({"width": width, "height": 900})
        for path in ("/", f"/processes/{pid}", "/workflows", "/engine", "/schedules"):
            await page.goto(d.url + path)
            # Waits for the layout to settle (scripts fill some pages after load); a page that stays too wide fails.
            try:
                await page.wait_for_function(
                    "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth", timeout=5000
                )
            except PlaywrightTimeoutError:
                pytest.fail(f"{path} scrolls sideways at {width} px")

    await page.goto(d.url + "/")
    await page.keyboard.press("Tab")
    await expect(page.locator(".skip")).to_be_focused()
    link = page.locator(f'tr[data-pid="{pid}"] a')
    for _ in range(30):  # the filters, then the rows' links, in reading order
        await page.keyboard.press("Tab")
        if await link.evaluate("element => element === document.activeElement"):
            break
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{d.url}/processes/{pid}")
    await page.get_by_label("Name").focus()
    await page.keyboard.type("Kay")
    await page.keyboard.press("Enter")  # submits the form
    await expect(page.locator('[role="status"]')).to_have_text("Resumed.")
    assert d.problems == []
