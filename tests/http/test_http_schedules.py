"""`/api/schedules` in orchestrator-core 5.x's payload shape; bad input is a 4xx problem, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import timeflows
from support.http import AppFactory, asgi_client, deny, problem
from support.waiting import wait_until

from orchestrator.runtime.orchestrator import Orchestrator

assert timeflows.time_tick  # registers the time workflows


async def test_create_list_get_update_delete_in_orchestrator_cores_payloads(
    client: httpx.AsyncClient, orch: Orchestrator
) -> None:
    workflow_id = str(orch.workflow_ids["time_tick"])
    body = {
        "name": "Tick every 2 hours",
        "workflow_name": "time_tick",
        "workflow_id": workflow_id,
        "trigger": "interval",
        "trigger_kwargs": {"hours": 2},
        "user_inputs": [{}],
        "scheduled_type": "create",
    }
    created = await client.post("/api/schedules/", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["workflow_id"] == workflow_id and schedule["trigger_kwargs"] == {"hours": 2}
    assert schedule["next_run_at"] - schedule["created_at"] == pytest.approx(7200, abs=1)
    assert schedule["last_run_at"] is None and schedule["source"] == "api"

    listed = await client.get("/api/schedules")
    assert [s["schedule_id"] for s in listed.json()] == [schedule["schedule_id"]]
    got = await client.get(f"/api/schedules/{schedule['schedule_id']}")
    assert got.json()["name"] == "Tick every 2 hours"

    update = {"schedule_id": schedule["schedule_id"], "trigger": "cron", "trigger_kwargs": {"minute": "*/5"}}
    updated = await client.put("/api/schedules/", json={**update, "scheduled_type": "update"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["trigger"] == "cron" and updated.json()["next_run_at"] % 300 == 0

    deleted = await client.request(
        "DELETE", "/api/schedules/", json={"workflow_id": workflow_id, "schedule_id": schedule["schedule_id"]}
    )
    assert deleted.status_code == 204
    assert (await client.get("/api/schedules")).json() == []


async def test_a_schedule_created_over_rest_starts_its_process(client: httpx.AsyncClient, orch: Orchestrator) -> None:
    body = {"workflow_name": "time_tick", "trigger": "date", "trigger_kwargs": {"run_date": "2021-06-01T00:00:00"}}
    schedule = (await client.post("/api/schedules/", json=body)).json()

    async def fired() -> Any:
        return (await client.get(f"/api/schedules/{schedule['schedule_id']}")).json()["last_pid"]

    await wait_until(fired, what="the schedule to start its process")
    process = (await client.get(f"/api/processes/{await fired()}")).json()
    assert process["created_by"] == "schedule:time_tick" and process["schedule_id"] == schedule["schedule_id"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"workflow_name": "time_tick", "trigger": "interval", "trigger_kwargs": {"seconds": 0}}, 400, "positive"),
        ({"workflow_name": "time_tick", "trigger": "cron", "trigger_kwargs": {"hour": "25"}}, 400, "cron"),
        ({"workflow_name": "time_tick", "trigger": "cron", "trigger_kwargs": {"timezone": "Nowhere"}}, 400, "zone"),
        ({"workflow_name": "time_tick", "trigger": "yearly"}, 422, "does not fit"),
        ({"workflow_name": "time_tick", "trigger": "interval", "trigger_kwargs": []}, 422, "does not fit"),
        ({"workflow_name": "time_tick", "trigger": "cron", "trigger_kwargs": {"hours": 1}}, 422, "does not fit"),
        ({"workflow_name": "time_tick", "trigger": "interval", "trigger_kwargs": {"hours": "1"}}, 422, "does not fit"),
        (
            {"workflow_name": "time_tick", "trigger": "interval", "trigger_kwargs": {"hours": 1},
             "no_uncompleted_instance": 0},
            422,
            "does not fit",
        ),
        ({"trigger": "interval", "trigger_kwargs": {"seconds": 5}}, 422, "does not fit"),
        ({"workflow_name": "nope", "trigger": "interval", "trigger_kwargs": {"seconds": 5}}, 404, "nope"),
        (
            {"workflow_name": "time_tick", "workflow_id": "00000000-0000-0000-0000-000000000000", "trigger": "date",
             "trigger_kwargs": {"run_date": "2030-01-01T00:00:00"}},
            404,
            "time_tick",
        ),
    ],
)  # fmt: skip
async def test_bad_schedules_are_problems(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, detail: str
) -> None:
    body_out = problem(await client.post("/api/schedules/", json=body), status)
    assert detail in body_out["detail"] or detail in str(body_out)
    assert (await client.get("/api/schedules")).json() == []


async def test_unknown_schedules_and_malformed_bodies(client: httpx.AsyncClient) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    problem(await client.put("/api/schedules/", json={"schedule_id": missing, "name": "x"}), 404)
    problem(await client.request("DELETE", "/api/schedules/", json={"schedule_id": missing}), 404)
    problem(await client.get(f"/api/schedules/{missing}"), 404)
    problem(await client.get("/api/schedules/not-a-uuid"), 422)
    problem(await client.post("/api/schedules/", content=b"{not json"), 422)


async def test_creating_a_schedule_needs_the_right_to_start_its_workflow(make_app: AppFactory) -> None:
    async with asgi_client(await make_app(authorizer=deny("start"))) as client:
        body = {"workflow_name": "time_tick", "trigger": "interval", "trigger_kwargs": {"seconds": 5}}
        problem(await client.post("/api/schedules/", json=body), 403)
        assert (await client.get("/api/schedules")).json() == []
