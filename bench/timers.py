"""`python -m bench.timers`: the time benchmarks, in threadpool mode, against a fresh database.

* wake-up lateness: N processes sleep at once, their due times spread over `--spread` seconds; lateness is from
  each due time to the step after the sleep starting (p50/p99);
* CPU while they sleep: this program's CPU seconds over `--idle` seconds with the N sleepers, against the same
  period with none (an idle engine);
* schedule ticks: S interval schedules of one second; ticks fired per second over `--ticks-for` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from datetime import timedelta
from typing import Any

from bench.database import create_database, with_database
from bench.scenarios import percentiles
from orchestrator import log, services
from orchestrator.dsl.forms import FormPage
from orchestrator.dsl.results import Process, Success
from orchestrator.dsl.sleep import sleep_step
from orchestrator.dsl.steps import Step, StepContext, done, init
from orchestrator.dsl.types import State
from orchestrator.dsl.workflow import Workflow, WorkflowRegistry
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import LogFormat, load_settings

ADMIN_URI = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _woke(state: State, ctx: StepContext) -> Process:
    return Success({**state, "woke_at": time.time()})


class SleepFor(FormPage):
    sleep_for: float


def _registry() -> WorkflowRegistry:
    def due(state: State) -> timedelta:
        return timedelta(seconds=float(state["sleep_for"]))

    sleeper = init >> sleep_step("Sleep", due) >> Step("Woke", _woke) >> done
    tick = init >> done
    return WorkflowRegistry(
        {
            "bench_sleeper": Workflow("bench_sleeper", sleeper, initial_input_form=SleepFor),
            "bench_tick": Workflow("bench_tick", tick, is_task=True),
        }
    )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _idle_cpu(seconds: float) -> float:
    before = _cpu()
    await asyncio.sleep(seconds)
    return round(_cpu() - before, 3)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_time_{uuid.uuid4().hex[:8]}"
    drop = await create_database(ADMIN_URI, name)
    try:
        settings = load_settings(DATABASE_URI=with_database(ADMIN_URI, name), LOG_LEVEL="WARNING", MAX_WORKERS=64)
        async with Orchestrator(settings, registry=_registry()) as orch:
            idle_empty = await _idle_cpu(args.idle)
            pool = orch.store.pool
            lead = args.idle + 30.0 + args.count / 100  # every sleeper is asleep before the first is due
            first_due = time.time() + lead
            await _start_sleepers(orch, args.count, first_due, args.spread)
            asleep = await _all_asleep(orch, args.count, first_due)
            idle_sleeping = await _idle_cpu(args.idle)
            await _all_completed(orch)
            rows = await pool.fetch(
                "SELECT (w.state->>'woke_at')::float8 - extract(epoch FROM (s.state->>'__sleep_until')::timestamptz)"
                " AS late FROM process_steps w JOIN process_steps s ON s.pid = w.pid"
                " WHERE w.name = 'Woke' AND s.name = 'Sleep'"
            )
            lateness = percentiles([r["late"] for r in rows])
            ticks = await _ticks(orch, args.schedules, args.ticks_for)
        return {
            "sleepers": args.count,
            "asleep_at_once": asleep,
            "lateness_s": lateness,
            "cpu_s_idle_engine": idle_empty,
            "cpu_s_while_sleeping": idle_sleeping,
            "idle_window_s": args.idle,
            "schedules": args.schedules,
            "ticks_per_s": ticks,
        }
    finally:
        await drop()


async def _start_sleepers(orch: Orchestrator, count: int, first_due: float, spread: float) -> None:
    """Start `count` sleepers whose due times are spread evenly over `spread` seconds from `first_due`."""
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            sleep_for = first_due + spread * i / count - time.time()
            await services.start_process("bench_sleeper", [{"sleep_for": sleep_for}], orchestrator=orch)

    await asyncio.gather(*(one(i) for i in range(count)))


async def _all_asleep(orch: Orchestrator, count: int, first_due: float) -> int:
    """Poll until `count` timers exist (every sleeper waits) or the first is due; return how many were asleep."""
    asleep = 0
    while asleep < count and time.time() < first_due:
        asleep = int(await orch.store.pool.fetchval("SELECT count(*) FROM process_timers"))
        await asyncio.sleep(0.5)
    return asleep


async def _all_completed(orch: Orchestrator) -> None:
    """Poll until no process is left unfinished (a bench measures from the database, as `bench.py` does)."""
    query = "SELECT count(*) FROM processes WHERE last_status <> 'completed'"
    for _ in range(3600):
        if not await orch.store.pool.fetchval(query):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("sleepers did not all complete within 30 minutes")


async def _ticks(orch: Orchestrator, count: int, seconds: float) -> float:
    for i in range(count):
        await services.create_schedule("bench_tick", "interval", {"seconds": 1}, name=f"tick {i}", orchestrator=orch)
    pool = orch.store.pool
    await asyncio.sleep(2)  # the first ticks are due one second after creation
    before, t0 = await pool.fetchval("SELECT count(*) FROM schedule_runs"), time.monotonic()
    await asyncio.sleep(seconds)
    after, t1 = await pool.fetchval("SELECT count(*) FROM schedule_runs"), time.monotonic()
    return float(round((after - before) / (t1 - t0), 1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.timers", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="processes sleeping at once (10000)")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds their due times spread over (60)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of CPU measurement while asleep (10)")
    parser.add_argument("--schedules", type=int, default=1000, help="interval schedules of 1 s (1000)")
    parser.add_argument("--ticks-for", type=float, default=10.0, help="seconds to count ticks over (10)")
    log.configure(LogFormat.CONSOLE, "WARNING")
    print(json.dumps(asyncio.run(bench(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
