"""`python -m bench.dashboard`: the dashboard's process list on a database of a million processes.

Seeds `--rows` processes with bulk SQL in a database of its own (dropped afterwards), then asks the app in-process
(httpx over ASGI: server time, no network) for the list pages an operator opens: the first page, filtered by
status, by workflow, tasks only, text searches (a note word, an id prefix, a workflow name, a word nowhere), and
the next page; and the first page's query alone, through the Python API. Prints the median and p95 of `--repeat`
requests each, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import asyncpg
import httpx

from bench.database import create_database, with_database
from orchestrator import log, services
from orchestrator.http import create_app
from orchestrator.persistence import migrations
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services import PageQuery
from orchestrator.settings import LogFormat, load_settings

ADMIN_URI = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKFLOWS = 20
STATUSES = ["completed"] * 90 + ["failed"] * 5 + ["suspended"] * 3 + ["aborted"] * 2
"""Statuses the engine leaves alone: the bench measures pages, not a sweeper taking over seeded runs."""

SEED = f"""
INSERT INTO workflows (name, target, is_task)
SELECT 'bench_workflow_' || i, (ARRAY['CREATE','MODIFY','TERMINATE','SYSTEM'])[1 + i % 4], i % 5 = 0
  FROM generate_series(0, {WORKFLOWS - 1}) AS i;
INSERT INTO processes (pid, workflow_id, last_status, last_step, started_at, last_modified_at, is_task, note,
                       created_by)
SELECT gen_random_uuid(), w.workflow_id, (ARRAY{STATUSES!r})[1 + (i::bigint * 7919) % {len(STATUSES)}],
       'Step ' || i % 9,
       now() - i * interval '1 second', now() - i * interval '1 second' + interval '2 seconds', w.is_task,
       CASE WHEN i % 100 = 0 THEN 'ticket INC-' || i ELSE NULL END, 'bench'
  FROM generate_series(1, $1::int) AS i
  JOIN LATERAL (SELECT workflow_id, is_task FROM workflows ORDER BY name OFFSET i % {WORKFLOWS} LIMIT 1) w ON true;
"""


async def _seed(dsn: str, rows: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.upgrade(conn)
        started = time.monotonic()
        for statement in SEED.strip().split(";\n"):
            if "$1" in statement:
                await conn.execute(statement, rows)
            else:
                await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE processes")
        await conn.execute("VACUUM ANALYZE workflows")
        return time.monotonic() - started
    finally:
        await conn.close()


async def _time(client: httpx.AsyncClient, url: str, repeat: int) -> dict[str, Any]:
    times = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = await client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        rows = response.text.count("<tr data-pid=")
    return _summary(times, rows)


async def _time_query(orch: Orchestrator, repeat: int) -> dict[str, Any]:
    """The first page's SQL through the Python API, without HTTP and templates: what the rest of a page costs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        rows, _more = await services.process_page(PageQuery(), orchestrator=orch)
        times.append((time.perf_counter() - started) * 1000)
    return _summary(times, len(rows))


def _summary(times: list[float], rows: int) -> dict[str, Any]:
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return {"median_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1), "rows": rows}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_dashboard_{uuid.uuid4().hex[:8]}"
    drop = await create_database(ADMIN_URI, name)
    try:
        dsn = with_database(ADMIN_URI, name)
        seconds = await _seed(dsn, args.rows)
        settings = load_settings(DATABASE_URI=dsn, LOG_LEVEL="WARNING", MIGRATE_ON_START=False)
        async with Orchestrator(settings) as orch:
            app = create_app(orchestrator=orch)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                    first = await client.get("/")
                    first.raise_for_status()
                    pid = first.text.split('<tr data-pid="', 2)[1].split('"', 1)[0]
                    next_link = first.text.split('rel="next"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0]
                    urls = {
                        "first page": "/",
                        "next page": "/" + next_link.replace("&amp;", "&"),
                        "status failed": "/?status=failed",
                        "workflow": "/?workflow=bench_workflow_7",
                        "tasks": "/?kind=task",
                        "oldest first": "/?dir=asc",
                        "search note word": "/?q=INC-4200",
                        "search common word": "/?q=ticket",
                        "failed, searched": "/?status=failed&q=INC-42",
                        "search id prefix": f"/?q={pid[:8]}",
                        "search workflow name": "/?q=workflow_13",
                        "search nowhere": "/?q=zzzz-nothing",
                    }
                    results = {label: await _time(client, url, args.repeat) for label, url in urls.items()}
                    results["first page, query alone"] = await _time_query(orch, args.repeat)
        return {"rows": args.rows, "seed_seconds": round(seconds, 1), "repeat": args.repeat, "pages": results}
    finally:
        await drop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="processes to seed (1000000)")
    parser.add_argument("--repeat", type=int, default=20, help="requests per page (20)")
    log.configure(LogFormat.CONSOLE, "WARNING")
    print(json.dumps(asyncio.run(bench(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
