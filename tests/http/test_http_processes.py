"""/api/processes: every endpoint, with orchestrator-core's shapes and status codes."""

from __future__ import annotations

import httpx
import pytest
import testflows
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from support.http import AppFactory, asgi_client, counts, deny, problem, start, wait_status

from orchestrator.dsl.steps import done, init
from orchestrator.dsl.workflow import Workflow, WorkflowRegistry, register
from orchestrator.http import create_app
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings


async def pause(client: httpx.AsyncClient, locked: bool = True) -> None:
    response = await client.put("/api/settings/status", json={"global_lock": locked})
    assert response.status_code == 200, response.text


# --- start --------------------------------------------------------------------------------------------------------


async def test_start_runs_to_completion(client: httpx.AsyncClient) -> None:
    pid = await start(client, "tf_simple")
    process = await wait_status(client, pid)
    assert process["last_status"] == "completed"
    assert process["workflow_name"] == "tf_simple"
    assert process["created_by"] == "SYSTEM"
    assert isinstance(process["started_at"], float)
    assert [s["name"] for s in process["steps"]] == ["Start", "Sync step", "Async step", "Done"]
    first = process["steps"][0]
    assert {"step_id", "stepid", "executed", "started", "completed", "state", "state_delta"} <= first.keys()
    assert isinstance(first["completed"], float)
    assert process["current_state"]["async"] is True
    assert process["form"] is None


async def test_start_reporter_overrides_the_user(client: httpx.AsyncClient) -> None:
    pid = await start(client, "tf_simple", reporter="alice")
    assert (await wait_status(client, pid))["created_by"] == "alice"
    body = problem(await client.post("/api/processes/tf_simple", json=[{}], params={"reporter": "x" * 101}), 422)
    assert body["validation_errors"][0]["loc"] == ["query", "reporter"]


async def test_start_errors(client: httpx.AsyncClient, orch: Orchestrator) -> None:
    before = await counts(orch)
    assert "does not exist" in problem(await client.post("/api/processes/nope", json=[{}]), 404)["detail"]

    invalid = problem(await client.post("/api/processes/tf_input", json=[{"size": "big"}]), 400)
    assert invalid["type"] == "FormValidationError"
    assert invalid["validation_errors"][0]["loc"] == ["size"]

    incomplete = problem(await client.post("/api/processes/tf_input", json=[]), 510)
    assert incomplete["type"] == "FormNotCompleteError"
    assert "size" in incomplete["form"]["properties"]
    second_page = problem(await client.post("/api/processes/tf_two_pages", json=[{"size": 2}]), 510)
    assert "name" in second_page["form"]["properties"]
    assert problem(await client.post("/api/processes/tf_simple", json=[{}, {}]), 400)["type"] == "FormOverflowError"

    assert problem(await client.post("/api/processes/tf_predicate", json=[{}]), 412)["detail"] == "not today"
    assert "not authorized" in problem(await client.post("/api/processes/tf_denied", json=[{}]), 403)["detail"]

    for body in ({"size": 1}, [1], "text"):
        problem(await client.post("/api/processes/tf_simple", json=body), 422)
    problem(await client.post("/api/processes/tf_simple"), 422)
    bad_json = problem(await client.post("/api/processes/tf_simple", content=b"[{"), 422)
    assert bad_json["validation_errors"][0]["type"] == "json_invalid"
    problem(await client.post("/api/processes/tf_simple", json=[{"x": "\u0000"}]), 400)  # EmptyForm forbids extras
    problem(await client.post("/api/processes/tf_input", json=[{"size": 1}], params={"reporter": "a\u0000"}), 400)

    await pause(client)
    assert "locked" in problem(await client.post("/api/processes/tf_simple", json=[{}]), 503)["detail"]
    assert await counts(orch) == before


class HeaderUser(AuthenticationBackend):
    """Stands for a deployment's authentication middleware: the user named in `X-User`."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


async def test_the_user_model_reaches_the_workflow_callbacks(settings: AppSettings) -> None:
    registry = WorkflowRegistry()
    register(
        Workflow("only_alice", init >> done, authorize_callback=lambda user: user.display_name == "alice"), registry
    )
    async with Orchestrator(settings, registry=registry) as orch:
        app = create_app(orchestrator=orch)
        async with app.router.lifespan_context(app), asgi_client(AuthenticationMiddleware(app, HeaderUser())) as client:
            problem(await client.post("/api/processes/only_alice", json=[{}]), 403)
            problem(await client.post("/api/processes/only_alice", json=[{}], headers={"x-user": "bob"}), 403)
            pid = await start(client, "only_alice", headers={"x-user": "alice"})
            assert (await wait_status(client, pid))["created_by"] == "alice"


async def test_start_asks_the_authorizer(make_app: AppFactory) -> None:
    authorizer = deny("start")
    async with asgi_client(await make_app(authorizer=authorizer)) as client:
        problem(await client.post("/api/processes/tf_simple", json=[{}]), 403)
    assert authorizer.asked == [("start", "tf_simple")]  # type: ignore[attr-defined]


# --- read ---------------------------------------------------------------------------------------------------------


async def test_get_process_waiting_for_input(client: httpx.AsyncClient) -> None:
    pid = await start(client, "tf_input", [{"size": 3}])
    process = await wait_status(client, pid, {"suspended"})
    assert process["last_step"] == "Ask name"
    assert process["form"]["properties"].keys() >= {"name", "count"}
    statuses = [(s["name"], s["status"]) for s in process["steps"]]
    assert statuses == [
        ("Start", "success"),
        ("Sync step", "success"),
        ("Ask name", "suspend"),
        ("Ask name", "pending"),
        ("Use name", "pending"),
        ("Done", "pending"),
    ]
    assert process["current_state"]["size"] == 3


async def test_get_process_errors(client: httpx.AsyncClient) -> None:
    problem(await client.get("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11"), 404)
    not_an_id = await client.get("/api/processes/not-a-uuid")  # the URL of a workflow, which POST starts
    assert "takes POST" in problem(not_an_id, 405)["detail"] and not_an_id.headers["Allow"] == "POST"
    body = problem(await client.put("/api/processes/not-a-uuid/resume", json={}), 422)
    assert body["validation_errors"][0]["loc"] == ["path", "process_id"]


async def test_status_counts(client: httpx.AsyncClient) -> None:
    await wait_status(client, await start(client, "tf_simple"))
    await wait_status(client, await start(client, "tf_task_fail"))
    response = await client.get("/api/processes/status-counts")
    assert response.status_code == 200
    assert response.json() == {"process_counts": {"completed": 1}, "task_counts": {"failed": 1}}


# --- resume -------------------------------------------------------------------------------------------------------


async def test_resume_validates_then_continues(client: httpx.AsyncClient, orch: Orchestrator) -> None:
    pid = await start(client, "tf_input", [{"size": 3}])
    await wait_status(client, pid, {"suspended"})
    before = await counts(orch)

    invalid = problem(await client.put(f"/api/processes/{pid}/resume", json=[{"count": "many"}]), 400)
    assert {tuple(e["loc"]) for e in invalid["validation_errors"]} == {("name",), ("count",)}
    problem(await client.put(f"/api/processes/{pid}/resume", json=[]), 510)
    problem(await client.put(f"/api/processes/{pid}/resume", json="x"), 422)
    problem(await client.put(f"/api/processes/{pid}/resume"), 422)
    assert await counts(orch) == before
    assert (await client.get(f"/api/processes/{pid}")).json()["last_status"] == "suspended"

    response = await client.put(f"/api/processes/{pid}/resume", json=[{"name": "bob", "count": 2}])
    assert response.status_code == 204, response.text
    assert response.content == b""
    process = await wait_status(client, pid)
    assert process["current_state"]["greeting"] == "hello bob x2 size 3"
    assert (
        "Resuming a completed workflow is not possible"
        in problem(await client.put(f"/api/processes/{pid}/resume", json=[{}]), 409)["detail"]
    )


async def test_resume_errors(client: httpx.AsyncClient) -> None:
    problem(await client.put("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11/resume", json=[{}]), 404)
    problem(await client.put("/api/processes/nope/resume", json=[{}]), 422)
    pid = await start(client, "tf_input", [{"size": 1}])
    await wait_status(client, pid, {"suspended"})
    await pause(client)
    problem(await client.put(f"/api/processes/{pid}/resume", json=[{"name": "x"}]), 503)


async def test_retry_asks_the_authorizer_for_retry(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(testflows.SWITCHES, "fail", True)
    authorizer = deny("retry")
    async with asgi_client(await make_app(authorizer=authorizer)) as client:
        pid = await start(client, "tf_fail")
        assert (await wait_status(client, pid))["last_status"] == "failed"
        problem(await client.put(f"/api/processes/{pid}/resume", json={}), 403)
    assert ("retry", pid) in authorizer.asked  # type: ignore[attr-defined]


async def test_retry_with_an_object_body(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(testflows.SWITCHES, "fail", True)
    pid = await start(client, "tf_fail")
    process = await wait_status(client, pid)
    assert process["last_status"] == "failed"
    assert process["failed_reason"] == "flaky failure"
    monkeypatch.setitem(testflows.SWITCHES, "fail", False)
    assert (await client.put(f"/api/processes/{pid}/resume", json={})).status_code == 204
    assert (await wait_status(client, pid))["last_status"] == "completed"


async def test_resume_denied_by_the_authorizer(make_app: AppFactory) -> None:
    authorizer = deny("resume")
    async with asgi_client(await make_app(authorizer=authorizer)) as client:
        pid = await start(client, "tf_input", [{"size": 1}])
        await wait_status(client, pid, {"suspended"})
        problem(await client.put(f"/api/processes/{pid}/resume", json=[{"name": "x"}]), 403)
    assert ("resume", pid) in authorizer.asked  # type: ignore[attr-defined]


# --- abort, delete, note, resume-all --------------------------------------------------------------------------------


async def test_abort(client: httpx.AsyncClient) -> None:
    pid = await start(client, "tf_input", [{"size": 1}])
    await wait_status(client, pid, {"suspended"})
    response = await client.put(f"/api/processes/{pid}/abort", params={"reporter": "carol"})
    assert response.status_code == 204
    process = (await client.get(f"/api/processes/{pid}")).json()
    assert process["last_status"] == "aborted"
    assert process["steps"][-1]["name"] == "User Aborted"
    assert process["steps"][-1]["created_by"] == "carol"
    problem(await client.put("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11/abort"), 404)


async def test_delete_only_tasks(client: httpx.AsyncClient) -> None:
    task = await start(client, "tf_task_fail")
    await wait_status(client, task)
    assert (await client.delete(f"/api/processes/{task}")).status_code == 204
    problem(await client.get(f"/api/processes/{task}"), 404)
    problem(await client.delete(f"/api/processes/{task}"), 404)

    workflow = await start(client, "tf_simple")
    await wait_status(client, workflow)
    assert "Only tasks" in problem(await client.delete(f"/api/processes/{workflow}"), 400)["detail"]


async def test_patch_note(client: httpx.AsyncClient) -> None:
    pid = await start(client, "tf_simple")
    await wait_status(client, pid)
    response = await client.patch(f"/api/processes/{pid}", json={"note": "checked by ops"})
    assert response.status_code == 200, response.text
    assert response.json()["note"] == "checked by ops"
    assert (await client.patch(f"/api/processes/{pid}", json={})).json()["note"] == "checked by ops"
    assert (await client.patch(f"/api/processes/{pid}", json={"note": None})).json()["note"] is None
    problem(await client.patch(f"/api/processes/{pid}", json={"note": "x" * 5001}), 422)
    problem(await client.patch(f"/api/processes/{pid}", json={"notes": "typo"}), 422)
    problem(await client.patch(f"/api/processes/{pid}", json={"note": "nul\u0000"}), 400)
    problem(await client.patch("/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11", json={"note": "x"}), 404)


async def test_resume_all(client: httpx.AsyncClient) -> None:
    for key in ("tf_task_fail", "tf_task_api", "tf_simple"):
        await wait_status(client, await start(client, key))
    response = await client.put("/api/processes/resume-all", params={"reporter": "ops"})
    assert response.status_code == 200
    assert response.json() == {"count": 2}
    await pause(client)
    problem(await client.put("/api/processes/resume-all"), 503)


# --- callbacks ------------------------------------------------------------------------------------------------------


async def test_callback_and_progress(client: httpx.AsyncClient) -> None:
    pid = await start(client, "tf_callback")
    process = await wait_status(client, pid, {"awaiting_callback"})
    route = process["current_state"]["callback_route"]
    token = process["current_state"]["__callback_token"]
    assert route == f"/api/processes/{pid}/callback/{token}"

    response = await client.post(f"{route}/progress", json={"percent": 50})
    assert response.status_code == 200
    assert response.json() is None
    process = (await client.get(f"/api/processes/{pid}")).json()
    assert process["current_state"]["callback_progress"] == {"percent": 50}
    text = await client.post(f"{route}/progress", content="almost there", headers={"content-type": "text/plain"})
    assert text.status_code == 200
    assert (await client.get(f"/api/processes/{pid}")).json()["current_state"]["callback_progress"] == "almost there"

    problem(await client.post(f"/api/processes/{pid}/callback/wrong", json={"ok": True}), 404)
    problem(await client.post(f"/api/processes/{pid}/callback/wrong/progress", json={}), 404)
    problem(await client.post(route, json=["not", "an", "object"]), 422)

    await pause(client)
    problem(await client.post(route, json={"ok": True}), 503)
    problem(await client.post(f"{route}/progress", json={}), 503)
    await pause(client, False)

    response = await client.post(route, json={"ok": True})
    assert response.status_code == 200
    assert response.json() is None
    process = await wait_status(client, pid)
    assert process["last_status"] == "completed"
    assert process["current_state"]["validated"] is True
    assert "awaiting" in problem(await client.post(route, json={"ok": True}), 409)["detail"]
    problem(await client.post(f"/api/processes/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11/callback/{token}", json={}), 404)
