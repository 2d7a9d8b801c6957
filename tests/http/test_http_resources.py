"""/api/workflows, /api/settings, /api/health and /metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.http import problem, start, wait_status

from orchestrator.persistence import reads
from orchestrator.runtime.orchestrator import Orchestrator


async def test_workflows(client: httpx.AsyncClient, orch: Orchestrator) -> None:
    response = await client.get("/api/workflows")
    assert response.status_code == 200
    by_key = {w["key"]: w for w in response.json()}
    assert by_key.keys() >= {"tf_simple", "tf_input", "tf_task_fail"}
    simple = by_key["tf_simple"]
    assert simple["name"] == "tf_simple"
    assert simple["target"] == "CREATE"
    assert simple["is_task"] is False
    assert simple["description"] == "Simple"
    assert isinstance(simple["created_at"], float)
    assert [s["name"] for s in simple["steps"]] == ["Start", "Sync step", "Async step", "Done"]
    assert by_key["tf_task_fail"]["is_task"] is True

    one = await client.get(f"/api/workflows/{simple['workflow_id']}")
    assert one.status_code == 200
    assert one.json() == simple
    problem(await client.get("/api/workflows/8c4ed3ff-4c1f-4a4e-8a8a-1e4b3f9a6a11"), 404)
    problem(await client.get("/api/workflows/tf_simple"), 422)


async def test_workflow_removed_from_code_has_no_steps(client: httpx.AsyncClient, orch: Orchestrator) -> None:
    await orch.store.upsert_workflows([("gone_from_code", "SYSTEM", "Old", False)])
    gone = [w for w in (await client.get("/api/workflows")).json() if w["key"] == "gone_from_code"]
    assert gone[0]["steps"] is None


async def test_engine_pause_and_unpause(client: httpx.AsyncClient) -> None:
    status = await client.get("/api/settings/status")
    assert status.json() == {"global_lock": False, "global_status": "RUNNING", "running_processes": 0}
    paused = await client.put("/api/settings/status", json={"global_lock": True})
    assert paused.status_code == 200
    assert paused.json()["global_status"] == "PAUSED"
    resumed = await client.put("/api/settings/status", json={"global_lock": False})
    assert resumed.json()["global_status"] == "RUNNING"
    for body in ({}, {"global_lock": "yes please"}, {"global_lock": True, "extra": 1}, [True]):
        problem(await client.put("/api/settings/status", json=body), 422)


async def test_worker_status(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/settings/worker-status")
    assert response.status_code == 200
    body = response.json()
    assert body["executor_type"] == "threadpool"
    assert body.keys() == {
        "executor_type",
        "number_of_workers_online",
        "number_of_queued_jobs",
        "number_of_running_jobs",
    }


async def test_health(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == "OK"

    async def unreachable(pool: object) -> bool:
        raise OSError("connection refused")

    monkeypatch.setattr(reads, "database_answers", unreachable)
    problem(await client.get("/api/health"), 503)


async def test_metrics(client: httpx.AsyncClient) -> None:
    await wait_status(client, await start(client, "tf_simple"))
    await wait_status(client, await start(client, "tf_task_fail"))
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("orchestrator_processes", (("kind", "workflow"), ("status", "completed")))] == 1
    assert samples[("orchestrator_processes", (("kind", "task"), ("status", "failed")))] == 1
    assert samples[("orchestrator_queue_depth", ())] == 0
    steps = samples[("orchestrator_step_duration_seconds_count", ())]
    assert steps == 6  # Start, Sync step, Async step, Done; Start, Detailed failure
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "orchestrator_step_duration_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1] == (float("inf"), steps)
    assert samples[("orchestrator_workers_online", ())] >= 1
    assert samples[("orchestrator_executor_capacity", ())] >= 1
    assert 0 <= samples[("orchestrator_executor_saturation", ())] <= 1


def test_the_migration_counted_history_with_the_histogram_bounds() -> None:
    """Migration 0006 seeds `step_duration_counts` from existing rows with the bounds the step writer uses."""
    import re

    from orchestrator.persistence.migrations import migrations_dir
    from orchestrator.persistence.step_durations import NEGATED_BOUNDS

    text = (migrations_dir() / "0006_history_at_scale.sql").read_text()
    literal = re.search(r"'\{([-0-9.,]+)\}'::float8\[\]", text)
    assert literal is not None
    assert [float(v) for v in literal.group(1).split(",")] == NEGATED_BOUNDS
