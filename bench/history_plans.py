"""EXPLAIN (ANALYZE, BUFFERS) of the statements that run periodically whatever the load (the sweeper's, the timer
loop's, the outbox relay's, one retention batch): which scans they use and what they cost, on a given database.
Each runs in a transaction that is rolled back, so nothing changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from orchestrator.persistence import outbox, recovery, retention, timers

STATEMENTS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "sweeper: take over expired leases": (recovery._TAKE_OVER_EXPIRED, (500, None)),
    "sweeper: lost dispatches": (recovery._UNDISPATCHED, (300.0, 1000, None)),
    "sweeper: timed-out callbacks": (recovery._FAIL_TIMED_OUT_CALLBACKS, ()),
    "sweeper: waiting without a timer": (timers._RESUME_WAITING, (3600.0, 1000)),
    "timers: next due time": (timers._NEXT_DUE, ()),
    "timers: fire due timers": (timers._FIRE_DUE, (1000,)),
    "relay: outbox batch": (outbox._TAKE, (100,)),
    "retention: one prune batch": (retention.PRUNE_BATCH, (datetime(2000, 1, 1, tzinfo=UTC), False, 1000)),
}
"""Name → (SQL, parameters). The retention batch's cut-off matches nothing: the plan of finding nothing to do,
which is what runs on every scheduled prune once the backlog is gone."""

_BIG = {"processes", "process_steps", "input_states"}


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def explain(conn: asyncpg.Connection, sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *params)
    finally:
        await tx.rollback()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]
    scans = sorted(
        {
            f"{n['Node Type']} {n.get('Index Name') or n.get('Relation Name')}"
            for n in _nodes(plan["Plan"])
            if "Scan" in n["Node Type"] and n["Node Type"] not in ("CTE Scan", "Function Scan", "Subquery Scan")
        }
    )
    seq_on_big = [s for s in scans if s.startswith("Seq Scan") and s.split()[-1] in _BIG]
    return {
        "ms": round(plan["Execution Time"], 3),
        "shared_hit_read": plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0),
        "scans": scans,
        "seq_scan_of_history": seq_on_big,
    }


async def explain_all(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {name: await explain(conn, sql, params) for name, (sql, params) in STATEMENTS.items()}
    finally:
        await conn.close()
