"""`python -m bench.history`: the same measurements on an empty database and on one holding a large history.

Two fresh databases are migrated; one is seeded (`bench/history_seed.py`: by default 1,000,000 completed, 50,000
failed and 50,000 suspended processes, five step rows each). On each, in one run:

* start throughput and lone-process latency: `python -m bench --scenarios threadpool,latency` as a subprocess
  with `DATABASE_URI` set to that database (its table's figures);
* p50/p95 of `GET /api/processes` (first page: default order with `range` and with `limit`, a status filter, a
  kind filter sorted by time; deep pages by OFFSET and by keyset cursor at rows 10,000 and 1,000,000),
  of one process's detail (`GET /api/processes/{id}`, random seeded processes) and of a `/metrics` scrape,
  through the app in this program (ASGI, no network);
* EXPLAIN (ANALYZE, BUFFERS) of the sweeper's, the timers', the relay's and the retention's statements: the
  scans they use and their execution time.

Prints a Markdown report (what `docs/performance.md` quotes) and saves the JSON with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.console import note
from bench.database import create_database, with_database
from bench.history_plans import explain_all
from bench.history_seed import seed
from bench.scenarios import percentiles
from orchestrator import log
from orchestrator.http import create_app, listing
from orchestrator.persistence import migrations
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import LogFormat, load_settings

ADMIN_URI = os.environ.get("BENCH_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")

READS = {
    "list_first_page": "/api/processes?range=0,25",
    "list_first_page_keyset": "/api/processes?limit=25",
    "list_status_filter": "/api/processes?filter=lastStatus,failed&range=0,25",
    "list_task_filter_sorted": "/api/processes?filter=isTask,true&sort=startedAt,desc&range=0,25",
    "metrics": "/metrics",
}
DEEP = {
    # name: (filter, rows before the page, requests): OFFSET against keyset (`after`) at the same position
    "list_completed_{}_10000": ("lastStatus,completed", 10_000, None),
    "list_{}_1000000": (None, 1_000_000, 5),
}
"""Deep pages: `range` at an offset, and `after` with the cursor of the row just before it (`{}` is `offset` or
`after`). An OFFSET of a million rows takes seconds, so it is measured `requests` times, not `--repeat`."""


async def _timed(client: httpx.AsyncClient, path: str, repeat: int) -> dict[str, float | None]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return percentiles(times)


async def _deep(pool: asyncpg.Pool, client: httpx.AsyncClient, repeat: int) -> dict[str, Any]:
    """Each deep page by OFFSET and by keyset; None where the database has fewer rows than the offset."""
    result: dict[str, Any] = {}
    for name, (filter_, offset, requests) in DEEP.items():
        status = "WHERE last_status = 'completed'" if filter_ else ""
        before = await pool.fetchrow(
            f"SELECT started_at, pid FROM processes {status} ORDER BY started_at DESC, pid OFFSET $1 LIMIT 1",
            offset - 1,
        )
        if before is None:
            result[name.format("offset")] = result[name.format("after")] = None
            continue
        conditions = listing.parse_filter(filter_)
        cursor = listing.encode_cursor((before["started_at"], before["pid"]), conditions, [])
        query = f"filter={filter_}&" if filter_ else ""
        paths = {
            "offset": f"/api/processes?{query}range={offset},{offset + 25}",
            "after": f"/api/processes?{query}limit=25&after={cursor}",
        }
        offset_page = (await client.get(paths["offset"])).json()
        keyset_page = (await client.get(paths["after"])).json()
        assert offset_page == keyset_page, f"{name}: OFFSET and keyset pages differ"
        for kind, path in paths.items():
            result[name.format(kind)] = await _timed(client, path, requests or repeat)
    return result


async def _reads(dsn: str, repeat: int) -> dict[str, Any]:
    settings = load_settings(DATABASE_URI=dsn, LOG_LEVEL="WARNING")
    async with Orchestrator(settings) as orch:
        app = create_app(orchestrator=orch)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for path in READS.values():  # warm the caches and the connections
                await client.get(path)
            result = {name: await _timed(client, path, repeat) for name, path in READS.items()}
            result.update(await _deep(orch.store.pool, client, repeat))
            pids = [r["pid"] for r in await orch.store.pool.fetch("SELECT pid FROM processes TABLESAMPLE SYSTEM (1)")]
            pids = pids[:repeat] or [r["pid"] for r in await orch.store.pool.fetch("SELECT pid FROM processes")]
            detail = []
            for pid in pids:
                t0 = time.perf_counter()
                response = await client.get(f"/api/processes/{pid}")
                detail.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, response.text
            result["process_detail"] = percentiles(detail)
            first = await client.get(READS["list_first_page"])
            result["content_range"] = first.headers.get("content-range")
    return result


def _bench_run(dsn: str, count: int, latency_count: int) -> dict[str, Any]:
    """The start scenarios, in the bench proper, on `dsn`; its figures, or why a scenario failed."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out, errors = Path(tmp) / "run.json", Path(tmp) / "stderr.log"
        env = {**os.environ, "DATABASE_URI": dsn}
        for scenario, n in (("threadpool", count), ("latency", latency_count)):
            command = [sys.executable, "-m", "bench", "--scenarios", scenario, "-n", str(n), "--json", str(out)]
            with errors.open("w") as stderr:
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)  # noqa: S603
            if done.returncode != 0 or not out.exists():
                tail = errors.read_text(errors="replace").strip().splitlines()[-3:]
                note(f"{scenario} failed: {' | '.join(tail)}")
                figures[f"{scenario}_failed"] = tail
                continue
            result = json.loads(out.read_text())["scenarios"][scenario]
            out.unlink()
            if scenario == "threadpool":
                figures["throughput_per_s"] = result["throughput"]
                figures["postgres_cpu_ms_per_process"] = round(1000 * result["postgres_cpu_s"] / result["n"], 3)
            else:
                figures["lone_latency_ms"] = result["latency_ms"]
                figures["lone_client_p50_ms"] = result["client_latency_ms"]["p50"]
    return figures


async def _database(name: str) -> tuple[str, Any]:
    drop = await create_database(ADMIN_URI, name)
    dsn = with_database(ADMIN_URI, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.upgrade(conn)
    finally:
        await conn.close()
    return dsn, drop


async def _seeded(args: argparse.Namespace, run: str) -> tuple[str, Any, dict[str, Any]]:
    """The full database: `--full NAME` as it is, or a fresh one seeded now."""
    if args.full:
        dsn = with_database(ADMIN_URI, args.full)

        async def keep() -> None:
            return None

        drop_full: Any = keep
    else:
        dsn, drop_full = await _database(f"bench_history_{run}_full")
    conn = await asyncpg.connect(dsn)
    try:
        seconds = 0.0 if args.full else await seed(conn, args.processes)
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        processes = int(await conn.fetchval("SELECT coalesce(sum(n), 0) FROM process_status_counts"))
    finally:
        await conn.close()
    note(f"full database: {processes:,} processes ({size}); seeded in {seconds:.0f} s")
    return dsn, drop_full, {"processes": int(processes or 0), "seed_seconds": round(seconds), "size": size}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    empty_dsn, drop_empty = await _database(f"bench_history_{run}_empty")
    full_dsn, drop_full, report = await _seeded(args, run)
    databases = {"empty": empty_dsn, "full": full_dsn}
    try:
        for label, dsn in databases.items():
            note(f"{label}: reads and statement plans")
            report[label] = {"reads_ms": await _reads(dsn, args.repeat), "plans": await explain_all(dsn), "starts": []}
        for round_ in range(args.rounds if args.starts else 0):
            for label, dsn in databases.items():  # alternating, so that a change of machine load hits both
                note(f"{label}: start scenarios, round {round_ + 1}")
                report[label]["starts"].append(_bench_run(dsn, args.count, args.latency_count))
        if args.keep:
            note(f"kept: {', '.join(d.rpartition('/')[2] for d in databases.values())}")
        return report
    finally:
        if not args.keep:
            await drop_empty()
            await drop_full()


def _p(figures: dict[str, Any] | None, key: str = "p95") -> str:
    value = (figures or {}).get(key)
    return "-" if value is None else f"{value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as the tables `docs/performance.md` quotes."""
    empty, full = report["empty"], report["full"]
    lines = [
        f"Full database: {report['processes']:,} processes, {report['size']}.",
        "",
        "| measurement | empty: p50 / p95 ms | full: p50 / p95 ms |",
        "|---|---|---|",
    ]
    deep = [name.format(kind) for name in DEEP for kind in ("offset", "after")]
    for name in [*READS, *deep, "process_detail"]:
        e, f = empty["reads_ms"].get(name), full["reads_ms"].get(name)
        lines.append(f"| {name} | {_p(e, 'p50')} / {_p(e)} | {_p(f, 'p50')} / {_p(f)} |")
    lines += ["", "| start scenarios (round) | empty | full |", "|---|---|---|"]
    for i, (e, f) in enumerate(zip(empty["starts"], full["starts"], strict=False), 1):
        for key, label in (("throughput_per_s", "throughput, processes/s"),
                           ("postgres_cpu_ms_per_process", "PostgreSQL CPU ms/process")):  # fmt: skip
            lines.append(f"| {label} ({i}) | {e.get(key, '-')} | {f.get(key, '-')} |")
        lines.append(
            f"| lone process p50 / p95 ms ({i}) | {_p(e.get('lone_latency_ms'), 'p50')} / "
            f"{_p(e.get('lone_latency_ms'))} | {_p(f.get('lone_latency_ms'), 'p50')} / {_p(f.get('lone_latency_ms'))} |"
        )
    lines += ["", "| periodic statement | empty ms | full ms | scans (full) |", "|---|---|---|---|"]
    for name, plan in full["plans"].items():
        lines.append(f"| {name} | {empty['plans'][name]['ms']} | {plan['ms']} | {', '.join(plan['scans'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--processes", type=int, default=1_100_000, help="processes to seed (1,100,000)")
    parser.add_argument("--repeat", type=int, default=200, help="requests per read measured (200)")
    parser.add_argument("-n", "--count", type=int, default=1000, help="processes of the throughput scenario (1000)")
    parser.add_argument("--latency-count", type=int, default=200, help="processes of the latency scenario (200)")
    parser.add_argument("--no-starts", dest="starts", action="store_false", help="skip the start scenarios")
    parser.add_argument("--rounds", type=int, default=2, help="start-scenario rounds, alternating databases (2)")
    parser.add_argument("--keep", action="store_true", help="keep the two databases (their names are printed)")
    parser.add_argument("--full", default=None, metavar="NAME", help="use this seeded database (kept) instead")
    parser.add_argument("--json", type=Path, default=None, help="save the results")
    args = parser.parse_args()
    log.configure(LogFormat.CONSOLE, "WARNING")
    report = asyncio.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
