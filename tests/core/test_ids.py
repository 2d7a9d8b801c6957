"""New steps get time-ordered ids (UUID version 7): inserts stay local in a large index. Process ids stay random:
their first characters tell processes apart."""

from __future__ import annotations

import random
import time
from uuid import UUID

from support.waiting import wait_status

from orchestrator import services
from orchestrator.ids import time_ordered_uuid
from orchestrator.runtime.orchestrator import Orchestrator


def _millis(value: UUID) -> int:
    return value.int >> 80


def test_ids_are_version_7_and_grow_with_time() -> None:
    first = time_ordered_uuid()
    later = first
    while _millis(later) == _millis(first):  # the next millisecond, whatever the machine's speed
        later = time_ordered_uuid()
    assert first.version == later.version == 7
    assert first.variant == later.variant == "specified in RFC 4122"
    assert later > first
    assert len({time_ordered_uuid() for _ in range(10_000)}) == 10_000


def test_a_workflow_seeding_random_does_not_repeat_step_ids() -> None:
    """Step code may call `random.seed`: ids made after the same seed in one millisecond must still differ."""
    while True:
        random.seed(0)
        first = time_ordered_uuid()
        random.seed(0)
        second = time_ordered_uuid()
        if _millis(first) == _millis(second):  # the same millisecond, whatever the machine's speed
            break
    assert first != second


async def test_steps_get_time_ordered_ids_and_processes_random_ones(orch: Orchestrator) -> None:
    before = time.time_ns() // 1_000_000
    pid = await services.start_process("tf_simple", [{}], user="alice", orchestrator=orch)
    await wait_status(orch, pid)
    after = time.time_ns() // 1_000_000
    stepids = [r["stepid"] for r in await orch.store.pool.fetch("SELECT stepid FROM process_steps WHERE pid = $1", pid)]
    assert len(stepids) == 4
    assert pid.version == 4
    for value in stepids:
        assert value.version == 7
        assert before <= _millis(value) <= after
