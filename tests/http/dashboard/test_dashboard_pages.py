"""The dashboard's pages over ASGI (no browser): what they show (branches, schedules), the headers and refusals
that keep them safe, and bad input as an error page, never a traceback."""

from __future__ import annotations

import re

import httpx
import parallelflows
import pytest
import timeflows
from support.http import AppFactory, asgi_client, deny, start, wait_status

from orchestrator.http.sessions import SESSION_SECONDS, new_session, valid_session
from orchestrator.settings import AppSettings

assert timeflows.time_tick and parallelflows.pf_input  # registers their workflows

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def settings(settings: AppSettings) -> AppSettings:
    return settings.model_copy(update={"WORKFLOW_MODULES": ["testflows", "dashboardflows", "parallelflows"]})


async def _csrf(client: httpx.AsyncClient, path: str) -> str:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    match = CSRF.search(response.text)
    assert match
    return match.group(1)


async def test_pages_carry_a_csp_without_inline_scripts(client: httpx.AsyncClient) -> None:
    for path in ("/", "/workflows", "/engine", "/schedules"):
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "unsafe-inline" not in response.headers["content-security-policy"]
        assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None, path  # no inline script
        assert " on" + "click=" not in response.text
    assert "content-security-policy" not in (await client.get("/api/processes")).headers  # the API is JSON


async def test_branch_steps_show_their_branch_and_the_branch_form_resumes(client: httpx.AsyncClient) -> None:
    pid = await start(client, "pf_input")
    await wait_status(client, pid, {"suspended"})
    page = await client.get(f"/processes/{pid}")
    assert page.status_code == 200
    assert "branch Ask[0]" in page.text and "branch Ask[1]" in page.text
    assert 'name="approved:bool"' in page.text  # the waiting branch's form
    token = CSRF.search(page.text)
    assert token
    resumed = await client.post(
        f"/processes/{pid}/resume", data={"csrf": token.group(1), "_bools": "approved", "approved:bool": "true"}
    )
    assert resumed.status_code == 303
    process = await wait_status(client, pid, {"suspended"})
    assert process["last_step"] == "Comment"


async def test_schedules_page_lists_next_and_last_run(client: httpx.AsyncClient) -> None:
    body = {"name": "Tick hourly", "workflow_name": "time_tick", "trigger": "interval", "trigger_kwargs": {"hours": 1}}
    created = await client.post("/api/schedules/", json=body)
    assert created.status_code == 201, created.text
    page = await client.get("/schedules")
    assert "Tick hourly" in page.text and "time_tick" in page.text
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[^"]+"', page.text)


async def test_state_changes_need_the_csrf_token_and_this_origin(client: httpx.AsyncClient) -> None:
    token = await _csrf(client, "/engine")
    assert (await client.post("/engine", data={"pause": "true"})).status_code == 403
    assert (await client.post("/engine", data={"pause": "true", "csrf": "forged"})).status_code == 403
    other_site = {"origin": "https://evil.example"}
    assert (await client.post("/engine", data={"pause": "true", "csrf": token}, headers=other_site)).status_code == 403
    assert (await client.get("/api/settings/status")).json()["global_status"] == "RUNNING"
    assert (await client.post("/engine", data={"pause": "true", "csrf": token})).status_code == 303
    assert (await client.get("/api/settings/status")).json()["global_status"] == "PAUSED"


async def test_bad_input_is_an_error_page(client: httpx.AsyncClient) -> None:
    cases = {
        "/?status=bogus": 400,
        "/?size=7": 400,
        "/?dir=sideways": 400,
        "/?after=garbage": 400,
        "/processes/not-a-uuid": 422,
        "/processes/00000000-0000-0000-0000-000000000000": 404,
        "/workflows/no_such_workflow": 404,
    }
    for path, status in cases.items():
        response = await client.get(path)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "Traceback" not in response.text
    token = await _csrf(client, "/engine")
    pid = await start(client, "tf_input", [{"size": 1}])
    too_long = await client.post(f"/processes/{pid}/note", data={"csrf": token, "note": "x" * 5001})
    assert too_long.status_code == 422 and "at most 5000" in too_long.text
    garbled = await client.post(f"/processes/{pid}/resume", data={"csrf": token, "_pages": "{"})
    assert garbled.status_code == 400
    assert (await client.post(f"/processes/{pid}/note", data={"csrf": "tökén"})).status_code == 403
    as_json = await client.post(f"/processes/{pid}/note", json={"csrf": token}, headers={"x-csrf-token": token})
    assert as_json.status_code == 422
    many = "&".join(f"f{i}=x" for i in range(1001))
    crowded = await client.post(
        f"/processes/{pid}/note",
        content=f"csrf={token}&{many}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert crowded.status_code == 422 and "at most 1000 fields" in crowded.text


async def test_the_authorizer_decides_every_page_and_action(make_app: AppFactory) -> None:
    authorizer = deny("abort", "engine")
    async with asgi_client(await make_app(authorizer=authorizer)) as client:
        pid = await start(client, "tf_input", [{"size": 1}])
        token = await _csrf(client, f"/processes/{pid}")
        refused = await client.post(f"/processes/{pid}/abort", data={"csrf": token})
        assert refused.status_code == 403 and "not authorized to abort" in refused.text
        assert (await client.post("/engine", data={"pause": "true", "csrf": token})).status_code == 403
    assert ("abort", pid) in authorizer.asked  # type: ignore[attr-defined]
    assert ("read", pid) in authorizer.asked  # type: ignore[attr-defined]


async def test_login_sends_only_to_a_page_of_this_site(make_app: AppFactory, settings: AppSettings) -> None:
    from pydantic import SecretStr

    app = await make_app(settings=settings.model_copy(update={"API_TOKEN": SecretStr("tok")}))
    async with asgi_client(app) as client:
        token = await _csrf(client, "/login?next=//evil.example")
        for target, expected in (
            ("//evil.example", "/"),
            ("https://evil.example", "/"),
            ("/engine?x=1", "/engine?x=1"),
        ):
            response = await client.post("/login", data={"csrf": token, "token": "tok", "next": target})
            assert response.status_code == 303
            assert response.headers["location"] == expected


def test_sessions_are_signed_with_the_token_and_expire() -> None:
    cookie = new_session("tok", now=1000.0)
    assert valid_session("tok", cookie, now=1001.0)
    assert not valid_session("other", cookie, now=1001.0)
    assert not valid_session("tok", cookie, now=1000.0 + SESSION_SECONDS)
    issued, nonce, signature = cookie.split(".")
    assert not valid_session("tok", f"{int(issued) + 3600}.{nonce}.{signature}", now=1001.0)
    assert not valid_session("tok", "garbage", now=1001.0)
