"""How a fork's branches are cut into messages in distributed mode (`dramatiq_executor.batches`)."""

from __future__ import annotations

from orchestrator.runtime.dramatiq_executor import BRANCH_BATCH, BRANCH_MESSAGES_MIN, batches


def sizes(n: int) -> list[int]:
    paths = [f"F[{i}]" for i in range(n)]
    cut = batches(paths)
    assert [p for batch in cut for p in batch] == paths  # every branch once, in branch order
    return [len(batch) for batch in cut]


def test_small_forks_spread_one_branch_per_message() -> None:
    assert sizes(0) == []
    assert sizes(1) == [1]
    assert sizes(2) == [1, 1]
    assert sizes(BRANCH_MESSAGES_MIN) == [1] * BRANCH_MESSAGES_MIN


def test_larger_forks_are_cut_into_even_batches_of_at_most_branch_batch() -> None:
    ten = sizes(10)
    assert len(ten) == BRANCH_MESSAGES_MIN and max(ten) - min(ten) <= 1
    thousand = sizes(1000)
    assert max(thousand) <= BRANCH_BATCH and len(thousand) == -(-1000 // BRANCH_BATCH)
    assert max(thousand) - min(thousand) <= 1
