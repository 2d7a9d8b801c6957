"""The side-by-side table of `python -m bench.reference`: ratios per round, their spread, the budgets.

The reference run itself needs orchestrator-core from PyPI and minutes of load (`just bench-reference --quick` is
its smoke run); this checks the arithmetic and the table on rounds written by hand.
"""

from __future__ import annotations

from typing import Any

from bench.ratios import OURS, REFERENCE, summarise, table


def _side(starts: float, resumes: float, p50: float, rss: float, cpu_s: float = 1.0) -> dict[str, Any]:
    def scenario(throughput: float, p50_ms: float = 1.0) -> dict[str, Any]:
        return {
            "throughput": throughput,
            "latency_ms": {"p50": p50_ms},
            "n": 100,
            "servers": {"api": {"cpu_s": cpu_s, "peak_rss_mb": rss}},
        }

    return {
        "threadpool": scenario(starts),
        "threadpool_task": scenario(starts),
        "resume": scenario(resumes),
        "latency": scenario(10.0, p50),
    }


def test_ratios_are_per_round_with_their_spread_and_budgets() -> None:
    rounds = [
        {OURS: _side(400, 300, 5.0, 60, cpu_s=0.2), REFERENCE: _side(10, 10, 150.0, 350, cpu_s=9.0)},
        {OURS: _side(300, 200, 6.0, 62), REFERENCE: _side(6, 10, 90.0, 351)},
    ]
    summary = {row["scenario"]: row for row in summarise(rounds)}
    starts = summary["starts, threadpool, to completed"]
    assert starts["ratios"] == [40.0, 50.0] and starts["met"] is True
    resumes = summary["resumes, to completed"]
    assert resumes["ratios"] == [30.0, 20.0] and resumes["met"] is False  # every round must meet it
    lone = summary["a lone process, created -> completed, p50"]
    assert lone["ratios"] == [30.0, 15.0]  # lower is better: reference / ours
    memory = summary["API peak RSS"]
    assert memory["ours"] == [60.0, 62.0] and memory["met"] is True
    cpu = summary["API CPU per start"]
    assert cpu["ours"][0] == 2.0 and cpu["reference"][0] == 90.0 and cpu["ratios"][0] == 45.0  # ms per process
    text = table({"rounds": rounds, "summary": list(summary.values())})
    assert "| starts, threadpool, to completed | 8.0 (6.0-10.0) /s | 350.0 (300.0-400.0) /s |" in text
    assert "**45.0 (40.0-50.0)x** | >= 40x met |" in text
    assert ">= 25x NOT met" in text
