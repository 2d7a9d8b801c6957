"""`python -m bench.dashboard_indexes`: what the dashboard's indexes (migration 0005) cost the engine's writes.

Every step of a process updates its row; the update changes the indexed lease, so it is never HOT and adds an
entry to every index of `processes`. This seeds `--rows` processes in a database of its own (dropped afterwards),
then times `--updates` updates shaped like a step's (status, step, modified time, lease), in PL/pgSQL so that
only the server's work is timed: with the schema as migrated, then with the `dashboard_*` indexes dropped, and
again both ways (`--rounds`), as the machine's speed drifts. Prints seconds per round and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

import asyncpg

from bench.database import create_database, with_database
from orchestrator.persistence import migrations

ADMIN_URI = "postgresql://postgres@127.0.0.1:5432/postgres"

SEED = """
INSERT INTO workflows (name) VALUES ('bench_indexes');
INSERT INTO processes (pid, workflow_id, last_status, last_step, started_at, note, lease_expires_at)
SELECT gen_random_uuid(), (SELECT workflow_id FROM workflows), 'running', 'Step', now() - i * interval '1 second',
       CASE WHEN i % 100 = 0 THEN 'ticket ' || i END, now()
  FROM generate_series(1, $1::int) AS i;
CREATE TABLE bench_ids AS SELECT row_number() OVER () AS n, pid FROM (SELECT pid FROM processes ORDER BY random()) s;
CREATE INDEX ON bench_ids (n);
"""

UPDATES = """
DO $$
DECLARE started timestamptz := clock_timestamp();
BEGIN
    FOR k IN 1..{count} LOOP
        UPDATE processes SET last_status = 'running', last_step = 'Step ' || k, last_modified_at = now(),
                             lease_expires_at = now() + interval '20 seconds'
         WHERE pid = (SELECT pid FROM bench_ids WHERE n = k);
    END LOOP;
    RAISE NOTICE '%', extract(epoch FROM clock_timestamp() - started);
END
$$
"""


async def _timed_updates(conn: asyncpg.Connection, count: int) -> float:
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, message: notices.append(message.message))
    await conn.execute(UPDATES.format(count=count))
    await conn.execute("VACUUM processes")
    return round(float(notices[-1]), 3)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_indexes_{uuid.uuid4().hex[:8]}"
    drop = await create_database(ADMIN_URI, name)
    try:
        conn = await asyncpg.connect(with_database(ADMIN_URI, name))
        try:
            await migrations.upgrade(conn)
            for statement in SEED.strip().split(";\n"):
                await (conn.execute(statement, args.rows) if "$1" in statement else conn.execute(statement))
            await conn.execute("VACUUM ANALYZE processes")
            definitions = [
                r["indexdef"]
                for r in await conn.fetch(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'processes' AND indexname LIKE 'dashboard_%'"
                )
            ]
            rounds: dict[str, list[float]] = {"with 0005": [], "without 0005": []}
            for _ in range(args.rounds):
                rounds["with 0005"].append(await _timed_updates(conn, args.updates))
                await conn.execute("DROP INDEX " + ", ".join(d.split()[2] for d in definitions))
                rounds["without 0005"].append(await _timed_updates(conn, args.updates))
                for definition in definitions:
                    await conn.execute(definition)
        finally:
            await conn.close()
        ratio = sum(rounds["with 0005"]) / sum(rounds["without 0005"])
        return {
            "rows": args.rows,
            "updates": args.updates,
            "indexes": definitions,
            "seconds": rounds,
            "ratio": round(ratio, 2),
        }
    finally:
        await drop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_indexes", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="processes to seed (200000)")
    parser.add_argument("--updates", type=int, default=20_000, help="step-like updates per measurement (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements each way (3)")
    print(json.dumps(asyncio.run(bench(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
