"""Group commits: a lone request is written by its caller, concurrent ones together."""

from __future__ import annotations

import asyncio

from orchestrator.persistence.groupcommit import GroupCommit


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
