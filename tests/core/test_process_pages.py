"""The dashboard's page query (`services.process_page`): keyset pages that never skip or repeat a row, in either
direction and with ties, filters, and a search that finds a text in workflow names, notes and id prefixes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from orchestrator import services
from orchestrator.persistence.pages import id_range
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services import PageQuery

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _seed(orch: Orchestrator) -> list[UUID]:
    """30 processes: ten of tf_simple, ten of tf_input (tasks), ten of tf_fail; started in pairs at the same
    second (ties), every fifth with a note."""
    pids = []
    rows = []
    for i in range(30):
        pid = uuid4()
        pids.append(pid)
        workflow = ("tf_simple", "tf_input", "tf_fail")[i % 3]
        note = f"ticket T-{i}" if i % 5 == 0 else None
        rows.append((pid, workflow, "failed" if i % 4 == 0 else "completed", T0 + timedelta(seconds=i // 2), note))
    await orch.store.pool.executemany(
        """INSERT INTO processes (pid, workflow_id, last_status, started_at, last_modified_at, is_task, note)
           SELECT $1, workflow_id, $3, $4, $4, $2 = 'tf_input', $5 FROM workflows WHERE name = $2""",
        rows,
    )
    return pids


async def _walk(orch: Orchestrator, query: PageQuery) -> list[dict[str, object]]:
    """Every page, following each page's last row, as the dashboard's "next page" link does."""
    seen: list[dict[str, object]] = []
    while True:
        rows, more = await services.process_page(query, orchestrator=orch)
        seen.extend(rows)
        if not more:
            return seen
        last = rows[-1]
        after = (last["started_at"], last["process_id"])
        query = PageQuery(**{**query.__dict__, "after": after})


@pytest.mark.parametrize("descending", [True, False])
async def test_pages_cover_every_row_once_in_order(orch: Orchestrator, descending: bool) -> None:
    pids = await _seed(orch)
    rows = await _walk(orch, PageQuery(size=7, descending=descending))
    assert sorted(r["process_id"] for r in rows) == sorted(pids)  # type: ignore[type-var]
    keys = [(r["started_at"], r["process_id"]) for r in rows]
    expected = sorted(keys, key=lambda k: (k[0], k[1]))  # type: ignore[arg-type]
    if descending:  # newest first; within a second, by id ascending
        expected = sorted(keys, key=lambda k: k[1])  # type: ignore[arg-type]
        expected = sorted(expected, key=lambda k: k[0], reverse=True)  # type: ignore[arg-type]
    else:
        expected = sorted(keys, key=lambda k: k[1], reverse=True)  # type: ignore[arg-type]
        expected = sorted(expected, key=lambda k: k[0])  # type: ignore[arg-type]
    assert keys == expected


async def test_filters_combine(orch: Orchestrator) -> None:
    await _seed(orch)
    failed = await _walk(orch, PageQuery(statuses=("failed",), size=3))
    assert len(failed) == 8 and {r["last_status"] for r in failed} == {"failed"}
    tasks = await _walk(orch, PageQuery(is_task=True, size=4))
    assert len(tasks) == 10 and {r["workflow_name"] for r in tasks} == {"tf_input"}
    both = await _walk(orch, PageQuery(workflow="tf_fail", statuses=("failed",), size=2))
    assert {r["workflow_name"] for r in both} == {"tf_fail"} and len(both) == 2  # i = 8 and 20
    assert (await services.process_page(PageQuery(workflow="no_such"), orchestrator=orch)) == ([], False)


async def test_search_finds_names_notes_and_id_prefixes_once(orch: Orchestrator) -> None:
    pids = await _seed(orch)
    by_note = await _walk(orch, PageQuery(search="T-1", size=2))  # notes are T-0, T-5, T-10, ..., T-25
    assert {r["note"] for r in by_note} == {"ticket T-10", "ticket T-15"}
    by_name = await _walk(orch, PageQuery(search="simpl", size=4))
    assert len(by_name) == 10 and {r["workflow_name"] for r in by_name} == {"tf_simple"}
    by_id = await services.process_page(PageQuery(search=str(pids[7])[:8].upper()), orchestrator=orch)
    assert pids[7] in [r["process_id"] for r in by_id[0]]
    # A note and a name both match "tf_": each row once.
    every = await _walk(orch, PageQuery(search="tf_", size=8))
    assert len(every) == 30 and len({r["process_id"] for r in every}) == 30
    # Wildcards are literal: "%" finds nothing rather than everything.
    assert await services.process_page(PageQuery(search="%"), orchestrator=orch) == ([], False)


def test_id_prefixes_are_key_ranges() -> None:
    low, high = id_range("ABCD-12") or (None, None)
    assert str(low) == "abcd1200-0000-0000-0000-000000000000"
    assert str(high) == "abcd12ff-ffff-ffff-ffff-ffffffffffff"
    assert id_range("abc") is None  # too short to be meant as an id
    assert id_range("not hex") is None
