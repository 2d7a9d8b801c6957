"""One bench run: set up, each scenario (warm-up, measured run, transaction count), tear down."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.console import BenchError, note
from bench.database import Database, Monitor, Stats, connect, database_name, provision_database, quiesce
from bench.options import LAYOUT, Options
from bench.processes import Launcher, reachable
from bench.profiling import Profiler, open_profiler
from bench.report import machine_info
from bench.resources import Resources
from bench.scenarios import Scenarios, Window
from orchestrator.settings import load_settings


class Bench:
    """One run: the database, the servers' launcher and the scenarios, opened once and torn down at the end."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex[:10]
        self.settings = load_settings()
        self.db: Database | None = None
        self.stats: Stats | None = None
        self.launcher: Launcher | None = None
        self.scenarios: Scenarios | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
        self.broker_ok = False
        self.broker_note = ""
        self.overhead: dict[str, int] = {}
        self.profiler: Profiler | None = None
        self.failed = False

    async def open(self) -> None:
        self.db = await provision_database(self.run_id)
        note(f"database: {self.db.description}")
        self.launcher = Launcher(self.settings, self.db.dsn, self.run_id, self.options.workers, self.log_dir)
        conn = await connect(self.db.stats_dsn)
        self.stats = Stats(conn, database_name(self.db.dsn), self.db.stats_dsn == self.db.dsn)
        self.scenarios = Scenarios(self.options, self.stats, self.launcher)
        needs_broker = any(LAYOUT[s] != "threadpool" for s in self.options.scenarios)
        if needs_broker:
            url = urlsplit(self.settings.BROKER_URL)
            host, port = url.hostname or "127.0.0.1", url.port or 5672
            self.broker_ok = reachable(host, port)
            if not self.broker_ok:
                self.broker_note = f"RabbitMQ not reachable at {host}:{port} (BROKER_URL): start it to run this"
                note(f"note: {self.broker_note}; skipping the distributed and celery scenarios")
        if self.options.profile_dir is not None:
            self.profiler = await open_profiler(self.options.profile_dir, self.db, self.options.native)

    async def close(self) -> None:
        if self.launcher is not None:
            self.launcher.kill_all()
        if self.stats is not None:
            await self.stats.conn.close()
        if self.db is not None and self.db.drop is not None:
            try:
                await self.db.drop()
            except (OSError, asyncpg.PostgresError) as exc:
                note(f"could not drop the bench database: {exc}")
        if self.broker_ok and self.launcher is not None:
            await self.launcher.delete_queues()
        if self.failed:
            note(f"server logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    async def calibrate(self, layout: str) -> int:
        """Transactions the servers of `layout` run by starting and stopping with no load (subtracted later)."""
        if layout not in self.overhead:
            assert self.db is not None
            assert self.stats is not None
            assert self.launcher is not None
            own0 = self.launcher.own_statements
            x0 = await self.stats.settled_xacts()
            stack = await self.launcher.start_stack(layout)
            monitor = await Monitor.open(self.db.dsn)
            await monitor.close()
            await self.launcher.stop_stack(stack)
            own = self.launcher.own_statements - own0
            self.overhead[layout] = max(0, await self.stats.settled_xacts() - x0 - own)
        return self.overhead[layout]

    async def run_scenario(self, name: str) -> dict[str, Any]:
        assert self.db is not None
        assert self.stats is not None
        assert self.launcher is not None
        assert self.scenarios is not None
        layout = LAYOUT[name]
        overhead = await self.calibrate(layout)
        n = self.options.n_for(name)
        await quiesce(self.db.dsn)
        own0 = self.launcher.own_statements
        x0 = await self.stats.settled_xacts()
        r0 = self.stats.rollbacks
        load0 = os.getloadavg()
        stack = await self.launcher.start_stack(layout)
        monitor = await Monitor.open(self.db.dsn)
        try:
            runner = self.scenarios[name]
            warm = await runner(stack, monitor, self.options.warmup, None)
            window = Window(name, stack.servers, Resources(stack.servers), self.profiler, monitor)
            result = await runner(stack, monitor, n, window)
        finally:
            await monitor.close()
            await self.launcher.stop_stack(stack)
        own = monitor.statements + self.launcher.own_statements - own0
        xacts = await self.stats.settled_xacts() - x0 - own - overhead
        processes = n + warm["processes"]
        result["xacts_per_process"] = round(xacts / processes, 2) if processes else None
        result["xacts"] = {
            "total": xacts,
            "rollbacks": self.stats.rollbacks - r0,
            "processes": processes,
            "server_overhead": overhead,
            "bench_own": own,
        }
        result["loadavg_before"] = [round(x, 2) for x in load0]
        return result


def pick_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["throughput"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        chosen["throughput_runs"] = [r["throughput"] for r in runs]
        chosen["p50_runs"] = [r["latency_ms"]["p50"] for r in runs]
        chosen["throughput_spread"] = round(statistics.pstdev(chosen["throughput_runs"]), 1)
    return chosen


async def run_bench(options: Options) -> dict[str, Any]:
    bench = Bench(options)
    results: dict[str, Any] = {
        "version": 1,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "options": {
            "count": options.count,
            "concurrency": options.concurrency,
            "workers": options.workers,
            "quick": options.quick,
            "repeat": options.repeat,
        },
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "scenarios": {},
        "skipped": {},
    }
    # SIGTERM/SIGINT cancel the run; the `finally` below still stops the servers, drops the database, deletes
    # the queues (the servers run in their own sessions: a terminal's Ctrl-C reaches only the bench).
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await bench.open()
        assert bench.db is not None
        results["database"] = bench.db.description
        for name in options.scenarios:
            if LAYOUT[name] != "threadpool" and not bench.broker_ok:
                results["skipped"][name] = bench.broker_note
                continue
            runs = []
            for i in range(options.repeat):
                if options.repeat > 1:
                    note(f"{name}: run {i + 1}/{options.repeat}")
                try:
                    runs.append(await bench.run_scenario(name))
                except BenchError as exc:
                    bench.failed = True
                    note(f"{name}: failed: {exc}")
                    results["skipped"][name] = f"failed: {str(exc).splitlines()[0]}"
                    break
            if runs and name not in results["skipped"]:
                results["scenarios"][name] = pick_median(runs)
                if any(r["errors"] for r in runs):
                    bench.failed = True
    finally:
        await bench.close()
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["failed"] = bench.failed
    return results
