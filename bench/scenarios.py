"""The scenarios: what load each sends, what it waits for, and what it reports."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench import fanout
from bench.console import BenchError, Progress
from bench.database import MARK, Monitor, Stats
from bench.load import EMPTY_FORM, JSON_HEADERS, LoadClient, LoadResponse, drive
from bench.options import Options
from bench.processes import Launcher, Server, Stack
from bench.profiling import Profiler
from bench.resources import Resources
from bench.watch import ENDED, SUSPENDED_OR_ENDED, Watcher
from orchestrator.dsl.types import ProcessStatus

BENCH_USER = "bench"


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 by linear interpolation between closest ranks (None when there is no value)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = (len(ordered) - 1) * q
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return {"p50": round(at(0.50), 3), "p95": round(at(0.95), 3), "p99": round(at(0.99), 3)}


@dataclass
class Window:
    """What is measured around the timed part of a scenario."""

    label: str
    servers: list[Server]
    resources: Resources
    profiler: Profiler | None
    monitor: Monitor


Scenario = Callable[[Stack, Monitor, int, Window | None], Awaitable[dict[str, Any]]]
"""Drives `n` processes through the servers of its layout; the window is None for the warm-up."""


class Scenarios:
    """The scenarios of `SCENARIOS`, run against servers the launcher started."""

    def __init__(self, options: Options, stats: Stats, launcher: Launcher) -> None:
        self.options, self.stats, self.launcher = options, stats, launcher

    def __getitem__(self, name: str) -> Scenario:
        scenarios: dict[str, Scenario] = {
            "threadpool": self._scenario_threadpool,
            "threadpool_task": self._scenario_threadpool_task,
            "latency": self._scenario_latency,
            "resume": self._scenario_resume,
            "distributed": self._scenario_distributed,
            "distributed_latency": self._scenario_distributed_latency,
            "celery": self._scenario_celery,
            "fanout": self._scenario_fanout,
            "distributed_fanout": self._scenario_distributed_fanout,
        }
        return scenarios[name]

    def _deadline(self, n: int) -> float:
        return time.monotonic() + (self.options.timeout or 60 + n / 2)

    async def _measured(self, window: Window | None, body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run `body` inside the measured window (resources, py-spy, pg_stat_statements); a warm-up has none."""
        if window is None:
            return await body()
        profiler = window.profiler
        sql_before = await profiler.statements_snapshot(window.monitor) if profiler and profiler.statements else {}
        mine = window.monitor.conn.get_server_pid()  # the bench's own backend is not the servers' cost
        window.resources.start([p for p in await self.stats.backends() if p != mine])
        if profiler is not None:
            profiler.start(window.label, window.servers)
        result = await body()
        result.update(await window.resources.stop([p for p in await self.stats.backends() if p != mine]))
        if profiler is not None:
            profile: dict[str, Any] = {}
            spy = await profiler.stop()
            if spy:
                profile["py-spy"] = spy
            if profiler.statements:
                after = await profiler.statements_snapshot(window.monitor)
                profile["sql"] = Profiler.statements_diff(sql_before, after)
                result["statements_per_process"] = Profiler.statements_per_process(sql_before, after, result["n"])
            result["profile"] = profile
        return result

    async def _starts(
        self,
        stack: Stack,
        monitor: Monitor,
        n: int,
        label: str,
        workflow: str,
        *,
        one_at_a_time: bool = False,
        body: bytes = EMPTY_FORM,
    ) -> tuple[Watcher, list[str], float, float]:
        """POST `n` starts of `workflow`; wait until each run ended. Returns (watcher, errors, t_first, t_last)."""
        assert stack.api_url is not None
        concurrency = 1 if one_at_a_time else self.options.concurrency
        watcher = Watcher(monitor, ENDED, Progress(label, n), interval=0.02)
        await watcher.start(listen=one_at_a_time)
        try:
            async with LoadClient(stack.api_url, concurrency) as client:

                async def send(_: int) -> LoadResponse:
                    return await client.post(f"/api/processes/{workflow}", content=body, headers=JSON_HEADERS)

                async def on_ok(_: int, t0: float, response: LoadResponse) -> None:
                    future = watcher.add(uuid.UUID(response.json()["id"]), t0)
                    if one_at_a_time:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):  # not wait_for: see Watcher
                            await future

                deadline = self._deadline(n)
                t_first = time.perf_counter()
                try:
                    errors = await drive(n, concurrency, send, 201, on_ok)
                except TimeoutError:
                    raise BenchError(f"{label}: a process did not end in time") from None
                await watcher.all_seen(deadline)
        finally:
            await watcher.stop()
        t_last = max((s.observed for s in watcher.seen.values()), default=t_first)
        return watcher, errors, t_first, t_last

    @staticmethod
    def _summary(
        n: int,
        concurrency: int,
        watcher: Watcher,
        errors: list[str],
        t_first: float,
        t_last: float,
        row_latency_ms: list[float],
    ) -> dict[str, Any]:
        statuses = Counter(s.status for s in watcher.seen.values())
        completed = statuses.get(ProcessStatus.COMPLETED.value, 0)
        wall = max(t_last - t_first, 1e-9)
        client = [(s.observed - watcher.sent[pid]) * 1000 for pid, s in watcher.seen.items()]
        return {
            "n": n,
            "concurrency": concurrency,
            "processes": n,
            "completed": completed,
            "statuses": dict(statuses),
            "errors": len(errors) + sum(v for k, v in statuses.items() if k != ProcessStatus.COMPLETED.value),
            "error_samples": errors[:3],
            "wall_s": round(wall, 3),
            "throughput": round(completed / wall, 1),
            "latency_ms": percentiles(row_latency_ms),
            "client_latency_ms": percentiles(client),
        }

    @staticmethod
    def _row_latencies(watcher: Watcher) -> list[float]:
        return [(s.last_modified_at - s.started_at).total_seconds() * 1000 for s in watcher.seen.values()]

    async def _throughput(
        self,
        stack: Stack,
        monitor: Monitor,
        n: int,
        window: Window | None,
        workflow: str,
        one_at_a_time: bool = False,
    ) -> dict[str, Any]:
        label = window.label if window else "warm-up"

        async def body() -> dict[str, Any]:
            watcher, errors, t0, t1 = await self._starts(
                stack, monitor, n, label, workflow, one_at_a_time=one_at_a_time
            )
            c = 1 if one_at_a_time else self.options.concurrency
            return self._summary(n, c, watcher, errors, t0, t1, self._row_latencies(watcher))

        return await self._measured(window, body)

    async def _scenario_threadpool(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        return await self._throughput(stack, monitor, n, window, "three_steps")

    async def _scenario_threadpool_task(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        return await self._throughput(stack, monitor, n, window, "task_three_steps")

    async def _scenario_distributed(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        result = await self._throughput(stack, monitor, n, window, "three_steps")
        result["workers"] = self.options.workers
        return result

    async def _scenario_latency(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        return await self._throughput(stack, monitor, n, window, "three_steps", one_at_a_time=True)

    async def _scenario_distributed_latency(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        result = await self._throughput(stack, monitor, n, window, "three_steps", one_at_a_time=True)
        result["workers"] = self.options.workers
        return result

    async def _scenario_fanout(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        label = window.label if window else "warm-up"

        async def starts(count: int, workflow: str, body: bytes) -> tuple[dict[str, Any], list[uuid.UUID]]:
            watcher, errors, t0, t1 = await self._starts(stack, monitor, count, label, workflow, body=body)
            summary = self._summary(count, self.options.concurrency, watcher, errors, t0, t1, [])
            summary["latency_ms"] = percentiles(self._row_latencies(watcher))
            return summary, list(watcher.seen)

        return await self._measured(window, lambda: fanout.measure(starts, monitor, n, self.options.quick))

    async def _scenario_distributed_fanout(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        result = await self._scenario_fanout(stack, monitor, n, window)
        result["workers"] = self.options.workers
        return result

    async def _scenario_resume(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        """Start N (not measured), wait until all are suspended, then resume all over HTTP: measured to completed."""
        assert stack.api_url is not None
        c = self.options.concurrency
        label = window.label if window else "warm-up"
        suspended = Watcher(monitor, SUSPENDED_OR_ENDED, Progress(f"{label} (start)", n))
        await suspended.start()
        async with LoadClient(stack.api_url, c) as client:
            try:

                async def start(_: int) -> LoadResponse:
                    return await client.post(
                        "/api/processes/three_steps_with_input", content=EMPTY_FORM, headers=JSON_HEADERS
                    )

                async def started(_: int, t0: float, response: LoadResponse) -> None:
                    suspended.add(uuid.UUID(response.json()["id"]), t0)

                start_errors = await drive(n, c, start, 201, started)
                await suspended.all_seen(self._deadline(n))
            finally:
                await suspended.stop()
            pids = [pid for pid, s in suspended.seen.items() if s.status == ProcessStatus.SUSPENDED.value]

            async def body() -> dict[str, Any]:
                watcher = Watcher(monitor, ENDED, Progress(label, len(pids)))
                await watcher.start()
                try:

                    async def resume(i: int) -> LoadResponse:
                        return await client.put(
                            f"/api/processes/{pids[i]}/resume", content=EMPTY_FORM, headers=JSON_HEADERS
                        )

                    async def resumed(i: int, t0: float, _: LoadResponse) -> None:
                        watcher.add(pids[i], t0)

                    t_first = time.perf_counter()
                    errors = start_errors + await drive(len(pids), c, resume, 204, resumed)
                    await watcher.all_seen(self._deadline(n))
                finally:
                    await watcher.stop()
                t_last = max((s.observed for s in watcher.seen.values()), default=t_first)
                rows = await monitor.fetch(
                    f"""{MARK} SELECT p.pid, p.last_modified_at - max(i.input_time) AS took
                          FROM processes p JOIN input_states i ON i.pid = p.pid AND i.input_type = 'user_input'
                         WHERE p.pid = ANY($1::uuid[]) GROUP BY p.pid, p.last_modified_at""",
                    list(watcher.seen),
                )
                row_latency = [r["took"].total_seconds() * 1000 for r in rows]
                return self._summary(n, c, watcher, errors, t_first, t_last, row_latency)

            return await self._measured(window, body)  # the window starts at the first resume

    async def _scenario_celery(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        """Rows written as orchestrator-core's API writes them (not measured), then `tasks.new_workflow` per
        process from a real Celery client: measured from the first message to the last completion."""
        pids = [uuid.uuid4() for _ in range(n)]
        await self._write_core_processes(monitor, pids, "three_steps")
        queue = self.launcher.celery_queue
        label = window.label if window else "warm-up"

        async def body() -> dict[str, Any]:
            watcher = Watcher(monitor, ENDED, Progress(label, n))
            await watcher.start()
            loop = asyncio.get_running_loop()
            t_first = time.perf_counter()
            try:
                sent = await asyncio.to_thread(self._celery_send, pids, queue, loop, watcher)
                await watcher.all_seen(self._deadline(n))
            finally:
                await watcher.stop()
            t_last = max((s.observed for s in watcher.seen.values()), default=t_first)
            # The rows were written before the clock started: latency is from each message's send instead.
            client = [(s.observed - watcher.sent[pid]) * 1000 for pid, s in watcher.seen.items()]
            result = self._summary(n, 0, watcher, [], t_first, t_last, client)
            result["send_s"] = round(sent, 3)
            result["workers"] = self.options.workers
            return result

        return await self._measured(window, body)

    async def _write_core_processes(self, monitor: Monitor, pids: list[uuid.UUID], workflow: str) -> None:
        """What orchestrator-core's `create_process` commits before it sends the Celery message: the process
        row (`created`) and its initial state."""
        states = [
            json.dumps(
                {"process_id": str(pid), "reporter": BENCH_USER, "workflow_name": workflow, "workflow_target": "SYSTEM"}
            )
            for pid in pids
        ]
        await monitor.fetch(
            f"""{MARK} WITH p AS (
                INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, assignee)
                SELECT pid, (SELECT workflow_id FROM workflows WHERE name = $3), 'created', $4, false, 'SYSTEM'
                  FROM unnest($1::uuid[]) AS pid
                RETURNING pid)
            INSERT INTO input_states (pid, input_state, input_type)
            SELECT x.pid, x.state::jsonb, 'initial_state' FROM unnest($1::uuid[], $2::text[]) AS x(pid, state)""",
            pids,
            states,
            workflow,
            BENCH_USER,
        )

    def _celery_send(
        self, pids: list[uuid.UUID], queue: str, loop: asyncio.AbstractEventLoop, watcher: Watcher
    ) -> float:
        """Publish with a real Celery 5 client, as orchestrator-core's `trigger_task.delay(pid, user)` does."""
        import kombu.pools
        from celery import Celery

        settings = self.launcher.settings
        app = Celery(f"bench-{self.launcher.run_id}", broker=settings.CELERY_BROKER_URL or settings.BROKER_URL)
        app.conf.update(broker_connection_retry=False, task_default_queue=queue)
        t0 = time.perf_counter()
        try:
            for pid in pids:
                sent_at = time.perf_counter()
                app.send_task("tasks.new_workflow", args=[str(pid), BENCH_USER], queue=queue)
                loop.call_soon_threadsafe(watcher.add, pid, sent_at)
            return time.perf_counter() - t0
        finally:
            app.close()
            kombu.pools.reset()  # type: ignore[no-untyped-call]
