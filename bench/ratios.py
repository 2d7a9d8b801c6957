"""The side-by-side table of `python -m bench.reference`: each figure per round, each ratio with its spread."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_SCENARIOS = ("threadpool", "threadpool_task", "resume", "latency")
"""Run in this order in each round, each by both systems (which goes first alternates)."""

OURS, REFERENCE = "ours", "orchestrator-core"
CPU_LOOP_ITERATIONS = 10_000_000


def cpu_loop_seconds() -> float:
    """The CPU speed of the moment: seconds for an empty 10-million-iteration loop in a Python function."""
    t0 = time.perf_counter()
    for _ in range(CPU_LOOP_ITERATIONS):
        pass
    return round(time.perf_counter() - t0, 3)


def _api_rss(measured: dict[str, Any]) -> float:
    """Peak resident memory of the API over the round's measured windows (MB)."""
    peaks = [float(server["peak_rss_mb"]) for result in measured.values() for server in result["servers"].values()]
    return max(peaks)


def _api_cpu_ms(scenario: str) -> Callable[[dict[str, Any]], float]:
    """The API's CPU per process of `scenario` (ms): what the machine's load does not change as much as the rates."""

    def value(measured: dict[str, Any]) -> float:
        result = measured[scenario]
        cpu = sum(float(server["cpu_s"]) for server in result["servers"].values())
        return 1000 * cpu / max(int(result["n"]), 1)

    return value


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    value: Callable[[dict[str, Any]], float]
    """The figure of one system in one round, from its scenario results."""
    higher_is_better: bool
    ratio_budget: float | None = None
    ours_budget: float | None = None
    """An absolute budget for our figure (API memory), checked instead of a ratio."""


ROWS = (
    Row("starts, threadpool, to completed", "/s", lambda m: m["threadpool"]["throughput"], True, 40),
    Row("the same as tasks", "/s", lambda m: m["threadpool_task"]["throughput"], True, None),
    Row("resumes, to completed", "/s", lambda m: m["resume"]["throughput"], True, 25),
    Row("a lone process, created -> completed, p50", "ms", lambda m: m["latency"]["latency_ms"]["p50"], False, 20),
    Row("API peak RSS", "MB", _api_rss, False, None, 100),
    Row("API CPU per start", "ms", _api_cpu_ms("threadpool"), False),
    Row("API CPU per resume", "ms", _api_cpu_ms("resume"), False),
)


def _spread(values: list[float], digits: int) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per row: each system's figure per round and the ratio per round (always "how many times better")."""
    out = []
    for row in ROWS:
        ours = [float(row.value(r[OURS])) for r in rounds]
        ref = [float(row.value(r[REFERENCE])) for r in rounds]
        ratios = [
            round((o / f) if row.higher_is_better else (f / o), 2) if o and f else 0.0
            for o, f in zip(ours, ref, strict=True)
        ]
        if row.ours_budget is not None:
            met = max(ours) <= row.ours_budget
        else:
            met = row.ratio_budget is None or min(ratios) >= row.ratio_budget
        out.append(
            {
                "scenario": row.label,
                "unit": row.unit,
                "ours": ours,
                "reference": ref,
                "ratios": ratios,
                "budget": row.ratio_budget or row.ours_budget,
                "met": met,
            }
        )
    return out


def table(results: dict[str, Any]) -> str:
    rounds = len(results["rounds"])
    lines = [
        f"| scenario | orchestrator-core 5.5 | this project | ratio, median (range) of {rounds} | budget |",
        "|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        digits = 1
        if row["unit"] == "MB":
            budget = f"ours <= {row['budget']:.0f} MB" + (" met" if row["met"] else " NOT met")
        elif row["budget"]:
            budget = f">= {row['budget']:.0f}x" + (" met" if row["met"] else " NOT met")
        else:
            budget = ""
        lines.append(
            f"| {row['scenario']} | {_spread(row['reference'], digits)} {row['unit']} | "
            f"{_spread(row['ours'], digits)} {row['unit']} | **{_spread(row['ratios'], 1)}x** | {budget} |"
        )
    return "\n".join(lines)


def save_partial(results: dict[str, Any], json_path: Path) -> None:
    """The rounds so far, summarised, into `json_path.partial` (replaced by `json_path` when the run ends)."""
    partial = {**results, "summary": summarise(results["rounds"])}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.with_suffix(json_path.suffix + ".partial").write_text(json.dumps(partial, indent=2, default=str))


def print_table(results: dict[str, Any], json_path: Path | None) -> None:
    options = results["options"]
    counts = options["counts"]
    print(
        f"same run, alternating: {counts['threadpool']} starts (and as tasks), {counts['resume']} resumes at "
        f"concurrency {options['concurrency']}, {counts['latency']} lone processes; {options['repeat']} round(s), "
        f"{results['wall_s']} s in all; commit {results['machine']['commit']}"
    )
    loops = results["cpu_loop_s"]
    print(f"CPU speed: a 10-million-iteration Python loop took {', '.join(f'{s:.2f}' for s in loops)} s (per round)")
    print(table(results))
    for i, measured in enumerate(results["rounds"], 1):
        for system, scenarios in measured.items():
            for name, result in scenarios.items():
                if result["errors"]:
                    print(f"round {i}, {system}, {name}: {result['errors']} errors, e.g. {result['error_samples'][:1]}")
    print(json.dumps(results, default=str))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=str))
