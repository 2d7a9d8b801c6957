"""One process in a real browser: a suspended process resumed by filling its two-page form (with a validation
error), retry of a failed process, abort, delete, the note, and hostile state shown as text."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
import testflows
from dashboardflows import HOSTILE
from playwright.async_api import expect
from support.browser import Dashboard
from support.http import wait_status


@pytest.fixture
def failing() -> Iterator[None]:
    testflows.SWITCHES["fail"] = True
    yield
    testflows.SWITCHES["fail"] = True


async def _start(d: Dashboard, key: str, pages: object = None) -> str:
    async with httpx.AsyncClient(base_url=d.url) as http:
        response = await http.post(f"/api/processes/{key}", json=pages or [{}])
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


async def _status(d: Dashboard, pid: str, statuses: set[str]) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=d.url) as http:
        return await wait_status(http, pid, statuses)


async def test_a_suspended_process_is_resumed_through_its_two_page_form(
    open_dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    d = await open_dashboard()
    page = d.page
    pid = await _start(d, "df_two_page_input")
    await _status(d, pid, {"suspended"})
    await page.goto(f"{d.url}/processes/{pid}")
    await expect(page.locator("h1")).to_contain_text("suspended")

    await page.get_by_label("Name").fill("Ada")
    await page.get_by_label("Count").fill("many")  # not an integer
    await page.get_by_label("Urgent").check()
    await page.get_by_label("Colour").select_option("blue")
    await page.get_by_label("Tags").fill("one\ntwo")
    await page.get_by_role("button", name="Resume").click()
    count_error = page.locator("#f-count-error")
    await expect(count_error).to_contain_text("valid integer")
    await expect(page.locator("#f-address-street-error")).to_contain_text("required")
    await expect(page.get_by_label("Name")).to_have_value("Ada")  # what was typed is kept
    await expect(page.get_by_label("Count")).to_have_attribute("aria-invalid", "true")

    await page.get_by_label("Count").fill("3")
    await page.get_by_label("Street").fill("Main street")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.get_by_text("Page 2")).to_be_visible()  # the form's second page
    await page.get_by_label("Confirm").check()
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator('[role="status"]')).to_have_text("Resumed.")

    process = await _status(d, pid, {"completed"})
    state = process["current_state"]
    assert isinstance(state, dict)
    assert state["summary"] == "Ada x3 at Main street (True)"
    assert state["details"]["tags"] == ["one", "two"]
    assert state["details"]["colour"] == "blue"
    assert state["details"]["urgent"] is True
    await expect(page.locator("h1")).to_contain_text("completed")  # live: the page follows the process
    assert d.problems == []


async def test_a_failed_process_is_retried_and_another_aborted(
    open_dashboard: Callable[..., Awaitable[Dashboard]], failing: None
) -> None:
    d = await open_dashboard()
    page = d.page
    pid = await _start(d, "tf_fail")
    await _status(d, pid, {"failed"})
    await page.goto(f"{d.url}/processes/{pid}")
    await expect(page.locator(".failure")).to_contain_text("flaky failure")
    await expect(page.locator(".traceback")).to_contain_text("ValueError")
    testflows.SWITCHES["fail"] = False
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator('[role="status"]')).to_have_text("Retried from the failed step.")
    await _status(d, pid, {"completed"})
    await expect(page.locator("h1")).to_contain_text("completed")
    await expect(page.locator(".timeline")).to_contain_text("retry 1")

    other = await _start(d, "tf_input", [{"size": 1}])
    await _status(d, other, {"suspended"})
    await page.goto(f"{d.url}/processes/{other}")
    await page.get_by_text("Abort…").click()
    await page.get_by_role("button", name="Yes, abort").click()
    await expect(page.locator('[role="status"]')).to_have_text("Aborted.")
    await expect(page.locator("h1")).to_contain_text("aborted")
    assert (await _status(d, other, {"aborted"}))["last_status"] == "aborted"
    assert d.problems == []


async def test_a_task_is_deleted_after_confirmation_and_a_note_is_saved(
    open_dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    d = await open_dashboard()
    page = d.page
    pid = await _start(d, "tf_task_fail")
    await _status(d, pid, {"failed"})
    await page.goto(f"{d.url}/processes/{pid}")
    await page.get_by_label("Note").fill("looked at it")
    await page.get_by_role("button", name="Save note").click()
    await expect(page.locator('[role="status"]')).to_have_text("Note saved.")
    await expect(page.locator(".facts")).to_contain_text("looked at it")

    await expect(page.get_by_role("button", name="Yes, delete")).to_be_hidden()  # behind the confirmation
    await page.get_by_text("Delete…").click()
    await page.get_by_role("button", name="Yes, delete").click()
    await expect(page.locator('[role="status"]')).to_have_text("Deleted.")
    async with httpx.AsyncClient(base_url=d.url) as http:
        assert (await http.get(f"/api/processes/{pid}")).status_code == 404
    assert d.problems == []


async def test_hostile_state_and_failure_are_shown_as_text(
    open_dashboard: Callable[..., Awaitable[Dashboard]],
) -> None:
    d = await open_dashboard()
    page = d.page
    pid = await _start(d, "df_hostile")
    await _status(d, pid, {"failed"})
    async with httpx.AsyncClient(base_url=d.url) as http:
        await http.patch(f"/api/processes/{pid}", json={"note": HOSTILE})
    for url in (f"{d.url}/processes/{pid}", f"{d.url}/"):
        await page.goto(url)
        await expect(page.locator("main")).to_contain_text('<script>document.title="pwned"</script>')
        assert await page.title() != "pwned"
        assert await page.locator("main script, main img").count() == 0
    assert "<script>" in (await page.locator("td.note").inner_text())
    assert d.problems == []
