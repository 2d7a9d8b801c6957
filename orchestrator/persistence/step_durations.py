"""The step-duration histogram of /metrics, as counters: the step writer's statement adds each outcome it writes to
`step_duration_counts`, so a scrape reads a few dozen rows whatever the size of `process_steps`.

A duration is counted in the bucket of the number of bounds it fits under (`width_bucket` over the negated
bounds), which gives Prometheus' inclusive `le` counts by a cumulative sum. Each writer adds to its own shard of
rows, so concurrent writers (workers sharing the database) do not queue on one row lock.
"""

from __future__ import annotations

from collections.abc import Sequence

STEP_SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""The histogram's upper bounds, in seconds; migration 0006 counted the existing step rows with these."""

NEGATED_BOUNDS = sorted(-b for b in STEP_SECONDS_BOUNDS)
DURATION_SHARDS = 64

HISTOGRAM_SQL = """
SELECT coalesce(jsonb_agg(jsonb_build_array(bucket, n, seconds)), '[]')
  FROM (SELECT bucket, sum(n) AS n, sum(seconds) AS seconds FROM step_duration_counts GROUP BY 1) h
"""
"""One JSON array of [bucket, count, seconds], summed over the shards; a sub-select of the metrics snapshot."""


def cumulative(buckets: Sequence[Sequence[float]]) -> tuple[list[tuple[float, int]], int, float]:
    """(cumulative (bound, count) per bound, total count, total seconds) from the [bucket, n, seconds] rows."""
    fitting = {int(k): int(n) for k, n, _ in buckets}
    bounds = list(STEP_SECONDS_BOUNDS)
    per_bound = [(bound, sum(n for k, n in fitting.items() if k >= len(bounds) - i)) for i, bound in enumerate(bounds)]
    return per_bound, sum(fitting.values()), float(sum(s for _, _, s in buckets))
