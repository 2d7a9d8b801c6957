"""`python -m bench.timers --mode threadpool|dramatiq|both`: the time benchmarks, against a fresh database, with
the servers as real subprocesses (`orchestrator serve`; with `dramatiq`, also K `dramatiq orchestrator.actors`
workers), each program running its timer loop:

* wake-up lateness: N processes sleep at once, their due times spread over `--spread` seconds; lateness is from
  each due time to the step after the sleep starting (p50/p99). They are started with due times a day away, so
  that however slowly a loaded machine starts them all are asleep before the first is due; once they are, their
  timers and wake-up times are moved forward by one amount (as a clock jumping);
* CPU while they sleep: the servers' (and their PostgreSQL backends') CPU seconds over `--idle` seconds with the
  N sleepers, against the same period before any was started (an idle engine);
* schedule ticks: S interval schedules of one second, created over REST; ticks fired per second over
  `--ticks-for` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.console import BenchError, note
from bench.database import MARK, connect, provision_database
from bench.load import JSON_HEADERS
from bench.processes import Launcher, Stack, http_client
from bench.resources import Resources
from bench.scenarios import percentiles
from orchestrator.persistence.timers import TIMERS_CHANNEL
from orchestrator.settings import load_settings

MODES = ("threadpool", "dramatiq")
FLOWS = "bench.timer_flows"
CONCURRENCY = 32
DAY = 86_400.0

_LATENESS = f"""{MARK}
SELECT (w.state->>'woke_at')::float8 - extract(epoch FROM (s.state->>'__sleep_until')::timestamptz) AS late
  FROM process_steps w JOIN process_steps s ON s.pid = w.pid
 WHERE w.name = 'Woke' AND s.name = 'Sleep'
"""
_SHIFT = (
    f"{MARK} UPDATE process_timers SET due_at = due_at - make_interval(secs => $1)",
    f"""{MARK} UPDATE process_steps
   SET state = jsonb_set(state, '{{__sleep_until}}',
                         to_jsonb((state->>'__sleep_until')::timestamptz - make_interval(secs => $1)))
 WHERE state ? '__sleep_until'""",
)
_BACKENDS = f"{MARK} SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


async def bench(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:10]
    db = await provision_database(run_id)
    log_dir = Path(tempfile.mkdtemp(prefix=f"orchestrator-bench-timers-{mode}-"))
    launcher = Launcher(load_settings(), db.dsn, run_id, args.workers, log_dir, workflows=FLOWS, threads=args.threads)
    conn = await connect(db.dsn)
    try:
        stack = await launcher.start_stack(mode)
        try:
            result = await _measure(stack, conn, args)
        finally:
            await launcher.stop_stack(stack)
        workers, threads = (args.workers, args.threads) if mode == "dramatiq" else (0, 0)
        return {"mode": mode, "workers": workers, "threads": threads, **result, "logs": str(log_dir)}
    finally:
        launcher.kill_all()
        await launcher.delete_queues()
        await conn.close()
        if db.drop is not None:
            await db.drop()


async def _measure(stack: Stack, conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.api_url is not None
    idle_engine = await _cpu_over(stack, conn, args.idle)
    far = time.time() + DAY
    await _start_sleepers(stack.api_url, args.count, far, args.spread)
    asleep = await _all_asleep(conn, args.count)
    while_sleeping = await _cpu_over(stack, conn, args.idle)
    shift = far - (time.time() + 2.0)  # the first is due two seconds from now
    async with conn.transaction():  # the timers and the wake-up times in the state that a timer is checked against
        for statement in _SHIFT:
            await conn.execute(statement, shift)
    await conn.execute(f"{MARK} SELECT pg_notify($1, $2)", TIMERS_CHANNEL, json.dumps({"due": far - shift}))
    await _all_completed(conn)
    lateness = percentiles([r["late"] for r in await conn.fetch(_LATENESS)])
    ticks = await _ticks(stack.api_url, conn, args.schedules, args.ticks_for)
    return {
        "sleepers": args.count,
        "asleep_at_once": asleep,
        "lateness_s": lateness,
        "idle_window_s": args.idle,
        "cpu_s_idle_engine": idle_engine,
        "cpu_s_while_sleeping": while_sleeping,
        "schedules": args.schedules,
        "ticks_per_s": ticks,
    }


async def _cpu_over(stack: Stack, conn: Any, seconds: float) -> dict[str, float]:
    """CPU seconds of the servers (process trees) and of their PostgreSQL backends over `seconds`."""
    backends = [r["pid"] for r in await conn.fetch(_BACKENDS)]
    resources = Resources(stack.servers)
    resources.start(backends)
    await asyncio.sleep(seconds)
    usage = await resources.stop(backends)
    servers = sum(s["cpu_s"] for s in usage["servers"].values())
    return {"servers": round(servers, 3), "postgres": usage["postgres_cpu_s"]}


async def _start_sleepers(api_url: str, count: int, first_due: float, spread: float) -> None:
    """Start `count` sleepers over REST, due at times spread evenly over `spread` seconds from `first_due`."""
    sem = asyncio.Semaphore(CONCURRENCY)
    async with http_client(api_url, CONCURRENCY) as client:

        async def one(i: int) -> None:
            body = orjson.dumps([{"wake_at": first_due + spread * i / count}])
            async with sem:
                response = await client.post("/api/processes/bench_sleeper", content=body, headers=JSON_HEADERS)
            if response.status_code != 201:
                raise BenchError(f"starting a sleeper: {response.status_code} {response.text[:300]}")

        await asyncio.gather(*(one(i) for i in range(count)))


async def _all_asleep(conn: Any, count: int) -> int:
    """Poll until `count` timers exist (every sleeper waits); return how many are asleep."""
    query = f"{MARK} SELECT count(*) FROM process_timers"
    for _ in range(3600):
        asleep = int(await conn.fetchval(query))
        if asleep >= count:
            return asleep
        await asyncio.sleep(0.5)
    raise BenchError(f"only {asleep} of {count} sleepers asleep after 30 minutes")


async def _all_completed(conn: Any) -> None:
    """Poll until no process is left unfinished (a bench measures from the database, as `bench` does)."""
    query = f"{MARK} SELECT count(*) FROM processes WHERE last_status <> 'completed'"
    for _ in range(3600):
        if not await conn.fetchval(query):
            return
        await asyncio.sleep(0.5)
    raise BenchError("sleepers did not all complete within 30 minutes")


async def _ticks(api_url: str, conn: Any, count: int, seconds: float) -> float:
    async with http_client(api_url, CONCURRENCY) as client:
        for i in range(count):
            body = {"workflow_name": "bench_tick", "name": f"tick {i}", "trigger": "interval"}
            response = await client.post("/api/schedules/", json={**body, "trigger_kwargs": {"seconds": 1}})
            if response.status_code != 201:
                raise BenchError(f"creating a schedule: {response.status_code} {response.text[:300]}")
    await asyncio.sleep(2)  # the first ticks are due one second after creation
    query = f"{MARK} SELECT count(*) FROM schedule_runs"
    before, t0 = await conn.fetchval(query), time.monotonic()
    await asyncio.sleep(seconds)
    after, t1 = await conn.fetchval(query), time.monotonic()
    return float(round((after - before) / (t1 - t0), 1))


def _commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)  # noqa: S607
    return run.stdout.strip() or "unknown"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = MODES if args.mode == "both" else (args.mode,)
    results = []
    for mode in modes:
        note(f"time bench, {mode} mode: {args.count} sleepers, {args.schedules} schedules")
        results.append(await bench(mode, args))
        note(json.dumps(results[-1]))  # on stderr as soon as it is known: a later mode may fail
    return {"commit": _commit(), "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.timers", description=__doc__)
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both", help="executor mode(s) (both)")
    parser.add_argument("--workers", type=int, default=2, help="Dramatiq worker processes, dramatiq mode (2)")
    parser.add_argument("--threads", type=int, default=8, help="each worker's -t, its run slots (8)")
    parser.add_argument("--count", type=int, default=10_000, help="processes sleeping at once (10000)")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds their due times spread over (60)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of CPU measurement while asleep (10)")
    parser.add_argument("--schedules", type=int, default=1000, help="interval schedules of 1 s (1000)")
    parser.add_argument("--ticks-for", type=float, default=10.0, help="seconds to count ticks over (10)")
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # the servers' logs: a line per tick would cost CPU
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
