"""Smoke run of `python -m bench`: a few processes per scenario keep the harness working.

Benchmarks are not tests: nothing here is timed; it only checks that each scenario ran and reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCENARIOS = ("threadpool", "latency", "resume", "fanout")


@pytest.mark.slow
def test_bench_quick_reports_every_scenario(database_uri: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EXECUTOR"))}
    env["DATABASE_URI"] = database_uri
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--scenarios", ",".join(SCENARIOS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,  # a hang guard, not a performance assertion
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    report = json.loads(last)
    assert report["database"].startswith("DATABASE_URI")
    assert set(report["scenarios"]) == set(SCENARIOS)
    for name, scenario in report["scenarios"].items():
        assert scenario["completed"] == scenario["n"] > 0, name
        assert scenario["errors"] == 0, name
        assert scenario["throughput"] > 0, name
        assert scenario["latency_ms"]["p50"] > 0, name
        assert scenario["servers"]["api"]["peak_rss_mb"] > 0, name
    fanout = report["scenarios"]["fanout"]["fanout"]
    assert fanout["branch_steps_per_s"] > 0 and fanout["plain_steps_per_s"] > 0
    assert fanout["single_fork"]["completed"] == 1 and fanout["single_fork"]["fork_to_join_s"] > 0
    assert "scenario" in result.stdout  # the human table
