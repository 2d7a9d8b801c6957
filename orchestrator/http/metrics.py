"""`/metrics` for Prometheus, computed from the database at scrape time, so that every API instance reports the
same cluster-wide numbers whichever executor runs the processes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http.context import context
from orchestrator.http.routing import Api, Reply

api = Api("metrics")


class _Snapshot(Collector):
    def __init__(self, snapshot: services.MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        processes = GaugeMetricFamily("orchestrator_processes", "Processes by status", labels=["status", "kind"])
        for status, is_task, count in s.processes:
            processes.add_metric([status, "task" if is_task else "workflow"], count)
        yield processes
        yield HistogramMetricFamily(
            "orchestrator_step_duration_seconds",
            "Time from a step's start to its logged outcome, over every outcome written",
            buckets=[*((str(bound), float(n)) for bound, n in s.step_buckets), ("+Inf", float(s.step_count))],
            sum_value=s.step_seconds,
        )
        yield GaugeMetricFamily(
            "orchestrator_branches",
            "Branches of parallel/map_parallel that have written a step row",
            value=s.branches,
        )
        yield GaugeMetricFamily(
            "orchestrator_branch_steps", "Step rows written by parallel branches", value=s.branch_steps
        )
        yield GaugeMetricFamily(
            "orchestrator_queue_depth", "Processes waiting for a runner (created or resumed)", value=s.queue_depth
        )
        yield GaugeMetricFamily(
            "orchestrator_workers_online", "Runners with a recent heartbeat", value=s.workers_online
        )
        yield GaugeMetricFamily("orchestrator_executor_running", "Processes running on online runners", value=s.running)
        yield GaugeMetricFamily(
            "orchestrator_executor_capacity", "Processes online runners can run at once", value=s.capacity
        )
        yield GaugeMetricFamily(
            "orchestrator_executor_saturation",
            "Running / capacity over online runners (0 without runners)",
            value=s.running / s.capacity if s.capacity else 0.0,
        )


@api.operation(
    "GET",
    "/metrics",
    summary="Prometheus metrics",
    replies=[Reply(200, "Prometheus text format", str, CONTENT_TYPE_LATEST.split(";")[0])],
)
async def metrics(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    snapshot = await services.metrics_snapshot(orchestrator=ctx.orchestrator)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
