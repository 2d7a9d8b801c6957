"""`python -m bench.soak --minutes N`: mixed load in distributed mode while workers are killed, then the invariants.

The API (`orchestrator serve`, EXECUTOR=dramatiq) and `--workers` Dramatiq workers run as subprocesses on a fresh
database and queues named for the run. For N minutes, `--concurrency` drivers each run one scenario after another,
picked at random: a plain workflow, a task, a workflow with an input step resumed by the driver, a workflow whose
step fails at random and is retried by the driver until it completes, and one aborted while it waits for input.
Every 20-40 s a random worker is killed with SIGKILL (and started again); the API is killed once, half-way through.
Every 10 s the resident memory of each server and the database's connection count are sampled.

At the end, once the load has stopped and every process has come to rest: each process the drivers started is in
the status its scenario implies (completed, or aborted), none is lost or extra, each step succeeded at most once per
process, and none is left `running`, `created` or `resumed` (a stuck lease or a lost dispatch). Exit status 1 if an
invariant fails. Prints the samples and a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.console import BenchError, note
from bench.database import connect, create_database, with_database
from bench.processes import Launcher, Server, http_client
from orchestrator import log
from orchestrator.persistence import migrations
from orchestrator.settings import LogFormat, load_settings

ADMIN_URI = os.environ.get("BENCH_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]

SCENARIOS = {  # name: (workflow, weight, final status)
    "plain": ("three_steps", 35, "completed"),
    "task": ("task_three_steps", 15, "completed"),
    "input": ("three_steps_with_input", 20, "completed"),
    "flaky": ("soak_flaky", 20, "completed"),
    "abort": ("three_steps_with_input", 10, "aborted"),
}
RETRYABLE = {"failed", "api_unavailable", "inconsistent_data", "waiting"}
SCENARIO_TIMEOUT = 180.0


class Driver:
    """One in-flight scenario at a time, over HTTP; every request retried while the API is down."""

    def __init__(self, client: httpx.AsyncClient, api_url: list[str]) -> None:
        self.client, self.api_url = client, api_url
        self.started: dict[str, str] = {}  # pid -> scenario
        self.errors: list[str] = []
        self.scenarios: Counter[str] = Counter()

    async def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        deadline = time.monotonic() + SCENARIO_TIMEOUT
        while True:
            try:
                response = await self.client.request(method, f"{self.api_url[0]}{path}", json=body, timeout=30)
                if response.status_code < 500:
                    return response
            except httpx.HTTPError:
                pass  # the API is down (killed) or restarting
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no answer for {SCENARIO_TIMEOUT:.0f} s")
            await asyncio.sleep(0.5)

    async def status(self, pid: str, wanted: set[str]) -> str:
        deadline = time.monotonic() + SCENARIO_TIMEOUT
        while time.monotonic() < deadline:
            response = await self.request("GET", f"/api/processes/{pid}")
            status = str(response.json()["last_status"])
            if status in wanted:
                return status
            await asyncio.sleep(0.3)
        raise TimeoutError(f"process {pid} did not reach {sorted(wanted)}")

    async def run_one(self, name: str) -> None:
        workflow, _, _ = SCENARIOS[name]
        response = await self.request("POST", f"/api/processes/{workflow}", [{}])
        if response.status_code != 201:
            raise BenchError(f"start of {workflow}: {response.status_code} {response.text[:200]}")
        pid = str(response.json()["id"])
        self.started[pid] = name
        if name in ("input", "abort"):
            await self.status(pid, {"suspended"})
            if name == "abort":
                await self.request("PUT", f"/api/processes/{pid}/abort")
                await self.status(pid, {"aborted"})
                return
            await self.request("PUT", f"/api/processes/{pid}/resume", [{"note": "soak"}])
        while (status := await self.status(pid, {"completed", *RETRYABLE})) != "completed":
            if status in RETRYABLE:
                await self.request("PUT", f"/api/processes/{pid}/resume", [{}])

    async def loop(self, until: float) -> None:
        names, weights = list(SCENARIOS), [w for _, w, _ in SCENARIOS.values()]
        while time.monotonic() < until:
            name = random.choices(names, weights)[0]
            try:
                await self.run_one(name)
                self.scenarios[name] += 1
            except (TimeoutError, BenchError) as exc:
                self.errors.append(f"{name}: {exc}")


async def _sample(launcher: Launcher, dsn: str, servers: dict[str, Server], samples: list[dict[str, Any]]) -> None:
    conn = await connect(dsn)
    try:
        t0 = time.monotonic()
        while True:
            rss = {
                name: round(sum(p.memory_info().rss for p in s.tree()) / 2**20, 1)
                for name, s in servers.items()
                if s.alive()
            }
            connections = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            samples.append({"t": round(time.monotonic() - t0), "rss_mb": rss, "db_connections": int(connections)})
            await asyncio.sleep(10)
    finally:
        await conn.close()


async def _chaos(launcher: Launcher, servers: dict[str, Server], until: float, kills: Counter[str]) -> None:
    """SIGKILL a random worker every 20-40 s (started again at once), and the API once, half-way."""
    api_killed = False
    halfway = time.monotonic() + (until - time.monotonic()) / 2
    while True:
        await asyncio.sleep(random.uniform(20, 40))
        if time.monotonic() >= until:
            return
        name = random.choice([n for n in servers if n.startswith("worker")])
        servers[name].kill()
        servers[name] = launcher.respawn(servers[name])
        kills["worker"] += 1
        if not api_killed and time.monotonic() >= halfway:
            servers["api"].kill()
            servers["api"] = launcher.respawn(servers["api"])
            kills["api"] += 1
            api_killed = True


async def _invariants(dsn: str, started: dict[str, str]) -> list[str]:
    conn = await connect(dsn)
    try:
        rows = await conn.fetch("SELECT pid::text, last_status FROM processes")
        steps = await conn.fetch(
            """SELECT pid::text, name, count(*) AS n FROM process_steps WHERE status IN ('success', 'complete')
                GROUP BY 1, 2 HAVING count(*) > 1"""
        )
    finally:
        await conn.close()
    found = {r["pid"]: r["last_status"] for r in rows}
    problems = [f"lost: {pid} ({name})" for pid, name in started.items() if pid not in found]
    problems += [f"not started by a driver: {pid} ({status})" for pid, status in found.items() if pid not in started]
    for pid, name in started.items():
        expected = SCENARIOS[name][2]
        if pid in found and found[pid] != expected:
            problems.append(f"{pid} ({name}) is {found[pid]}, expected {expected}")
    problems += [f"step {r['name']!r} of {r['pid']} succeeded {r['n']} times" for r in steps]
    return problems


async def _at_rest(dsn: str, timeout: float = 120.0) -> None:
    """Every process out of running/created/resumed (leases expired and taken over, dispatches delivered)."""
    conn = await connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(
            "SELECT count(*) FROM processes WHERE last_status IN ('running','created','resumed')"
        ):
            if time.monotonic() > deadline:
                return  # the invariants then report them
            await asyncio.sleep(1)
    finally:
        await conn.close()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    name = f"bench_soak_{run_id}"
    drop = await create_database(ADMIN_URI, name)
    dsn = with_database(ADMIN_URI, name)
    conn = await connect(dsn)
    await migrations.upgrade(conn)
    await conn.close()
    log_dir = Path(args.logs) if args.logs else Path(tempfile.gettempdir()) / name
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    os.environ.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        LEASE_TTL_SECONDS=os.environ.get("LEASE_TTL_SECONDS", "5"),
        SWEEP_INTERVAL_SECONDS=os.environ.get("SWEEP_INTERVAL_SECONDS", "1"),
        REDISPATCH_AFTER_SECONDS=os.environ.get("REDISPATCH_AFTER_SECONDS", "30"),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        DB_POOL_SIZE=os.environ.get("DB_POOL_SIZE", "5"),
    )
    launcher = Launcher(
        load_settings(), dsn, run_id, args.workers, log_dir, workflows="orchestrator.examples.workflows,bench.soakflows"
    )
    try:
        stack = await launcher.start_stack("dramatiq")
        assert stack.api_url is not None
        servers = {s.name: s for s in stack.servers}
        note(f"soak {name}: API + {args.workers} workers for {args.minutes} min; logs in {log_dir}")
        until = time.monotonic() + args.minutes * 60
        samples: list[dict[str, Any]] = []
        kills: Counter[str] = Counter()
        async with http_client(None, args.concurrency) as client:
            drivers = [Driver(client, [stack.api_url]) for _ in range(args.concurrency)]
            sampler = asyncio.create_task(_sample(launcher, dsn, servers, samples))
            chaos = asyncio.create_task(_chaos(launcher, servers, until, kills))
            await asyncio.gather(*(d.loop(until) for d in drivers))
            chaos.cancel()
            await _at_rest(dsn)
            sampler.cancel()
        started = {pid: s for d in drivers for pid, s in d.started.items()}
        problems = [e for d in drivers for e in d.errors] + await _invariants(dsn, started)
        return {
            "minutes": args.minutes,
            "workers": args.workers,
            "processes": len(started),
            "scenarios": dict(sum((d.scenarios for d in drivers), Counter())),
            "kills": dict(kills),
            "samples": samples,
            "problems": problems,
        }
    finally:
        launcher.kill_all()
        await launcher.delete_queues()
        if not args.keep:
            await drop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="how long the load runs (2)")
    parser.add_argument("--workers", type=int, default=2, help="Dramatiq worker processes (2)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="scenarios in flight (8)")
    parser.add_argument("--logs", default=None, help="where the servers' logs go (default /tmp/bench_soak_<id>)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--json", type=Path, default=None, help="save the summary")
    args = parser.parse_args()
    if args.minutes <= 0 or args.workers < 1 or args.concurrency < 1:
        parser.error("--minutes, --workers and --concurrency must be positive")
    log.configure(LogFormat.CONSOLE, "WARNING")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = asyncio.run(soak(args))
    for sample in report["samples"]:
        print(f"t={sample['t']:>5} s  connections {sample['db_connections']:>3}  rss MB {sample['rss_mb']}")
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    if report["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
