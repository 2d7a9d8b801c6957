"""A process waiting in a branch over HTTP: its detail lists branch steps in the flat `steps` list, its form is
the waiting branch's, and a resume goes to that branch."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.http import problem, start, wait_status

from orchestrator.settings import AppSettings


@pytest.fixture
def settings(settings: AppSettings) -> AppSettings:
    return settings.model_copy(update={"WORKFLOW_MODULES": ["testflows", "parallelflows"]})


async def test_inputstep_in_a_branch_resumed_over_http(client: httpx.AsyncClient) -> None:
    pid = await start(client, "pf_input")
    process = await wait_status(client, pid, {"suspended"})
    assert process["last_step"] == "Approve"
    assert "approved" in process["form"]["properties"]
    steps = {(s["name"], s["status"], s.get("branch")) for s in process["steps"]}
    assert {("Approve", "suspend", "Ask[0]"), ("Set A", "success", "Ask[1]"), ("Comment", "suspend", "Ask[2]")} <= steps
    assert ("Ask", "pending", None) in steps  # the fork itself is the workflow's next step until it joins

    invalid = problem(await client.put(f"/api/processes/{pid}/resume", json=[{"approved": "maybe"}]), 400)
    assert {tuple(e["loc"]) for e in invalid["validation_errors"]} == {("approved",)}
    response = await client.put(f"/api/processes/{pid}/resume", json=[{"approved": True}])
    assert response.status_code == 204, response.text

    process = await wait_status(client, pid, {"suspended"})
    assert process["last_step"] == "Comment" and "comment" in process["form"]["properties"]
    response = await client.put(f"/api/processes/{pid}/resume", json=[{"comment": "ok"}])
    assert response.status_code == 204, response.text
    process = await wait_status(client, pid)
    assert process["last_status"] == "completed"
    assert process["current_state"]["checked"] is True and process["current_state"]["comment"] == "ok"


async def test_metrics_count_branches_and_their_steps(client: httpx.AsyncClient) -> None:
    samples = await metric_samples(client)
    assert (samples["orchestrator_branches"], samples["orchestrator_branch_steps"]) == (0, 0)
    await wait_status(client, await start(client, "pf_parallel"))
    samples = await metric_samples(client)
    # Fan out[0]: Set A; Fan out[1]: Set B, Agree; Fan out[2]: Agree
    assert (samples["orchestrator_branches"], samples["orchestrator_branch_steps"]) == (3, 4)


async def metric_samples(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {s.name: s.value for family in text_string_to_metric_families(response.text) for s in family.samples}
