"""The status counters of migration 0006: kept exact by triggers whoever writes, folded when sessions end."""

from __future__ import annotations

import asyncpg
from support.waiting import wait_status

from orchestrator import services
from orchestrator.runtime.orchestrator import Orchestrator

_SCANNED = "SELECT is_task, last_status, count(*) AS n FROM processes GROUP BY 1, 2"


async def _flat(orch: Orchestrator) -> list[tuple[bool, str, int]]:
    counts = await services.status_counts(orchestrator=orch)
    return [(kind == "task_counts", s, n) for kind, by in counts.items() for s, n in by.items()]


async def _scanned(conn: asyncpg.Connection) -> set[tuple[bool, str, int]]:
    return {(r["is_task"], r["last_status"], r["n"]) for r in await conn.fetch(_SCANNED)}


async def test_counters_match_a_scan_through_runs_deletes_and_foreign_writers(
    orch: Orchestrator, database_uri: str
) -> None:
    for key in ("tf_simple", "tf_simple", "tf_task_fail", "tf_input"):
        await wait_status(orch, await services.start_process(key, [{}] if key != "tf_input" else [{"size": 1}],
                                                             orchestrator=orch))  # fmt: skip
    failed = await orch.store.pool.fetchval("SELECT pid FROM processes WHERE last_status = 'failed'")
    await services.delete_process(failed, orchestrator=orch)
    # Another program's session (an operator's SQL, an orchestrator-core API) writes and ends.
    other = await asyncpg.connect(database_uri)
    await other.execute("UPDATE processes SET last_status = 'aborted' WHERE last_status = 'suspended'")
    assert set(await _flat(orch)) == await _scanned(other)
    await other.close()
    await orch.store.fold_status_counts()
    backends = await orch.store.pool.fetch("SELECT DISTINCT backend FROM process_status_counts")
    alive = {r["pid"] for r in await orch.store.pool.fetch("SELECT pid FROM pg_stat_activity")}
    assert {r["backend"] for r in backends} <= alive | {0}
    async with orch.store.pool.acquire() as conn:
        assert set(await _flat(orch)) == await _scanned(conn)
