"""The fan-out benchmark (`just bench --scenarios fanout,distributed_fanout`): the example workflow
`fan_out` (one `map_parallel` of one-step branches) against `three_steps` in the same servers.

Four parts, all to completion: one process forking `SINGLE_FORK` branches; N processes of `SMALL_FORK` branches
at concurrency C; N `three_steps` processes for the plain-step rate of the same mode; one `fan_out_sleeping`, a
pair of branches sleeping 1 s each in a sync step (with 2 workers it joins in about 1 s, not 2, when the pair
runs at once). Reported: branch steps per second next to plain (user) steps per second, all step rows per second
on both sides, the time from fork to join (the first branch step's start to the join row's commit, from the step
rows), and for the pair its fork-to-join time and how many OS processes ran its branches.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import orjson

from bench.database import MARK, Monitor

SINGLE_FORK = 1000
SMALL_FORK = 10
PLAIN_STEPS = 3
"""User steps of a `three_steps` process (One, Two, Three), compared like for like with the branch steps (one user
step per branch): its rows `Start` and `Done` are built-in steps written with their neighbours' outcomes, as a
fork's `Start`, fork, join and `Done` rows are, and neither side counts them."""

PLAIN_ROWS = 5
"""All step rows of a `three_steps` process (Start, One, Two, Three, Done), reported beside all step rows of the
fan-out processes (Start, the fork, the branch steps, the join, Done): the other like-for-like count. (Before the
fourth session the bench compared branch steps with the plain processes' rows, which counted the plain side's
built-in steps only.)"""

SLEEPING_PAIR = {"branches": 2, "seconds": 1.0}

_FORK_TO_JOIN = f"""{MARK}
SELECT pid, extract(epoch FROM max(completed_at) FILTER (WHERE branch IS NULL AND name = $2)
                              - min(started_at) FILTER (WHERE branch IS NOT NULL))::float8 AS secs,
       count(*) FILTER (WHERE branch IS NOT NULL) AS branch_steps, count(*) AS rows
  FROM process_steps WHERE pid = ANY($1::uuid[]) GROUP BY pid"""

_BRANCH_OS_PIDS = f"""{MARK}
SELECT count(DISTINCT state ->> 'os_pid') FROM process_steps WHERE pid = $1 AND branch IS NOT NULL"""

Starts = Callable[[int, str, bytes], Awaitable[tuple[dict[str, Any], list[UUID]]]]
"""`starts(n, workflow, body)`: the summary of N starts run to completion, and their pids."""


async def measure(starts: Starts, monitor: Monitor, n: int, quick: bool) -> dict[str, Any]:
    single = SMALL_FORK * 5 if quick else SINGLE_FORK
    one, one_pid = await starts(1, "fan_out", orjson.dumps([{"branches": single}]))
    result, pids = await starts(n, "fan_out", orjson.dumps([{"branches": SMALL_FORK}]))
    plain, _ = await starts(n, "three_steps", b"[{}]")
    pair, pair_pid = await starts(1, "fan_out_sleeping", orjson.dumps([SLEEPING_PAIR]))
    forks = {row["pid"]: row for row in await monitor.fetch(_FORK_TO_JOIN, [*one_pid, *pids], "Fan out")}
    pair_rows = await monitor.fetch(_FORK_TO_JOIN, pair_pid, "Sleep")
    pair_secs = pair_rows[0]["secs"] if pair_rows else None
    single_secs = forks[one_pid[0]]["secs"] if one_pid and one_pid[0] in forks else None
    branch_steps = sum(int(forks[p]["branch_steps"]) for p in pids if p in forks)
    rows = sum(int(forks[p]["rows"]) for p in pids if p in forks)
    result["fanout"] = {
        "branches_per_process": SMALL_FORK,
        "branch_steps_per_s": round(branch_steps / result["wall_s"], 1),
        "plain_steps_per_s": round(plain["completed"] * PLAIN_STEPS / plain["wall_s"], 1),
        "rows_per_s": round(rows / result["wall_s"], 1),
        "plain_rows_per_s": round(plain["completed"] * PLAIN_ROWS / plain["wall_s"], 1),
        "fork_to_join_ms": _spread([forks[p]["secs"] * 1000 for p in pids if p in forks]),
        "single_fork": {
            "branches": single,
            "fork_to_join_s": round(single_secs, 3) if single_secs is not None else None,
            "branch_steps_per_s": round(single / single_secs, 1) if single_secs else None,
            "completed": one["completed"],
        },
        "sleeping_pair": {
            **SLEEPING_PAIR,
            "fork_to_join_s": round(pair_secs, 3) if pair_secs is not None else None,
            "os_processes": (await monitor.fetch(_BRANCH_OS_PIDS, pair_pid[0]))[0][0] if pair_pid else None,
            "completed": pair["completed"],
        },
        "plain_errors": plain["errors"],
    }
    result["errors"] += one["errors"] + plain["errors"] + pair["errors"]
    return result


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def format_fanout(name: str, fanout: dict[str, Any]) -> str:
    single, pair = fanout["single_fork"], fanout["sleeping_pair"]
    return (
        f"  {name:<20} branch steps/s {fanout['branch_steps_per_s']} ({fanout['branches_per_process']} per process) "
        f"vs plain steps/s {fanout['plain_steps_per_s']} (all step rows/s {fanout['rows_per_s']} vs "
        f"{fanout['plain_rows_per_s']}); fork->join p50 {fanout['fork_to_join_ms']['p50']} ms; "
        f"one fork of {single['branches']}: {single['fork_to_join_s']} s fork->join, "
        f"{single['branch_steps_per_s']} branch steps/s; 2x1 s sleeping pair: {pair['fork_to_join_s']} s fork->join "
        f"on {pair['os_processes']} OS process(es)"
    )
