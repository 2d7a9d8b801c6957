"""The process list in a real browser: live updates from the event stream, filters, paging."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx
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
