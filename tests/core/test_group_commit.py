"""Group commits: a lone request is written by its caller, concurrent ones together; a batch of resumes is a
compare-and-set per resume."""

from __future__ import annotations

import asyncio
import uuid

from support.waiting import wait_status

from orchestrator import services
from orchestrator.persistence.groupcommit import GroupCommit
from orchestrator.persistence.resumes import ResumeRow
from orchestrator.runtime.orchestrator import Orchestrator


async def test_a_lone_request_is_written_by_its_callers_task_and_later_ones_are_batched() -> None:
    """Nothing in flight: no task hop before the write is sent. Requests that come meanwhile wait for one batch."""
    writers: list[asyncio.Task[object] | None] = []
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def write_many(batch: list[int]) -> list[int]:
        writers.append(asyncio.current_task())
        batches.append(batch)
        await release.wait()
        return [r * 10 for r in batch]

    group: GroupCommit[int, int] = GroupCommit(write_many, max_in_flight=1)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    later = [asyncio.create_task(group.submit(r)) for r in (2, 3)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30]
    assert writers[0] is first
    assert writers[1] is not first and batches == [[1], [2, 3]]


async def test_resumes_of_one_process_in_one_batch_store_one_input(orch: Orchestrator) -> None:
    """Two resumes of one process in one statement: one is written, as one would win a race."""
    pid = await services.start_process("tf_input", [{"size": 1}], orchestrator=orch)
    await wait_status(orch, pid)
    token = await orch.store.pool.fetchval("SELECT fencing_token FROM processes WHERE pid = $1", pid)
    rows = [ResumeRow(pid, "suspended", user, {"name": user}, None, None, token) for user in ("ann", "bob")]
    written = await orch.store.resumes._resume_many(rows)
    assert sum(row is not None for row in written) == 1
    inputs = await orch.store.pool.fetch(
        "SELECT input_state FROM input_states WHERE pid = $1 AND input_type = 'user_input'", pid
    )
    winner = "ann" if written[0] is not None else "bob"
    assert [r["input_state"] for r in inputs] == [{"name": winner}]
    row = await orch.store.pool.fetchrow("SELECT last_status, run_by FROM processes WHERE pid = $1", pid)
    assert (row["last_status"], row["run_by"]) == ("resumed", winner)


async def test_reads_of_processes_made_together_are_answered_each_in_one_statement(orch: Orchestrator) -> None:
    """A batch of reads may name a process twice, or one that does not exist: each gets its own answer."""
    pid = await services.start_process("tf_input", [{"size": 1}], orchestrator=orch)
    await wait_status(orch, pid)
    missing = uuid.uuid4()
    read = await orch.store._load_many([pid, missing, pid])
    assert read[1] is None
    assert read[0] is not None and read[2] is not None
    assert (read[0]["pid"], read[0]["last_status"]) == (pid, "suspended") and read[0] == read[2]
    loaded = await asyncio.gather(orch.store.load(pid), orch.store.load(missing), orch.store.load(pid))
    assert [row["pid"] if row else None for row in loaded] == [pid, None, pid]
