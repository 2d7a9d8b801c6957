"""The scenarios the bench knows and the command line that chooses among them (`python -m bench --help`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCENARIOS: dict[str, str] = {
    "threadpool": "three_steps: N starts over HTTP at concurrency C, threadpool executor, to completed",
    "threadpool_task": "task_three_steps (a task): same",
    "latency": "three_steps one at a time: row started_at -> last_modified_at, and client POST -> completion seen",
    "resume": "three_steps_with_input: N suspended processes resumed over HTTP at concurrency C, to completed",
    "distributed": "three_steps, EXECUTOR=dramatiq, K worker processes (dramatiq -p 1 -t 8)",
    "distributed_latency": "three_steps one at a time, EXECUTOR=dramatiq, K workers (the latency scenario there)",
    "celery": "tasks.new_workflow from a real Celery client, via the celery-shim, to K workers, to completed",
    "fanout": "fan_out: one fork of 1000 one-step branches, then N processes of 10 branches, vs N three_steps",
    "distributed_fanout": "fanout with EXECUTOR=dramatiq and K workers",
}
LAYOUT = {
    "threadpool": "threadpool",
    "threadpool_task": "threadpool",
    "latency": "threadpool",
    "resume": "threadpool",
    "distributed": "dramatiq",
    "distributed_latency": "dramatiq",
    "celery": "celery",
    "fanout": "threadpool",
    "distributed_fanout": "dramatiq",
}
"""Which servers a scenario needs: `threadpool` (API), `dramatiq` (API + K workers), `celery` (shim + K workers)."""

DEFAULT_COUNTS = {
    "threadpool": 1000,
    "threadpool_task": 1000,
    "latency": 200,
    "resume": 500,
    "distributed": 1000,
    "distributed_latency": 200,
    "celery": 1000,
    "fanout": 200,
    "distributed_fanout": 200,
}
QUICK_COUNT = 5


@dataclass
class Options:
    scenarios: list[str]
    count: int | None
    concurrency: int
    workers: int
    json_path: Path | None
    compare_path: Path | None
    quick: bool
    repeat: int
    profile_dir: Path | None
    timeout: float | None
    native: bool = False

    def n_for(self, scenario: str) -> int:
        if self.count is not None:
            return self.count
        return QUICK_COUNT if self.quick else DEFAULT_COUNTS[scenario]

    @property
    def warmup(self) -> int:
        return 1 if self.quick else max(2 * self.concurrency, 20)


def _scenario_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    scenario_help = "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="End-to-end benchmarks: starts a database (DATABASE_URI, else a fresh database on the local "
        "PostgreSQL at BENCH_PG_ADMIN_URI, else the embedded one), the API, workers and the Celery shim as "
        "subprocesses (RabbitMQ must already run for the broker scenarios), drives load over HTTP, observes "
        "completion in the database, and prints a table plus one JSON line. Server settings (MAX_WORKERS, "
        "DB_POOL_SIZE, LOG_LEVEL, ...) are taken from the environment.",
        epilog=f"Scenarios: {scenario_help}.",
    )
    parser.add_argument(
        "--scenarios",
        type=_scenario_list,
        default=list(SCENARIOS),
        metavar="A,B",
        help=f"comma-separated scenarios (default: all: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=int,
        default=None,
        help="processes per scenario (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_COUNTS.items())
        + f"; {QUICK_COUNT} with --quick)",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=None, help="requests in flight (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="Dramatiq worker processes, distributed/celery (2)")
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario R times; report the median run")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, metavar="FILE", help="save the results")
    parser.add_argument(
        "--compare", dest="compare_path", type=Path, default=None, metavar="FILE", help="print ratios against FILE"
    )
    parser.add_argument(
        "--profile",
        dest="profile_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="record each server with py-spy (must be installed) into DIR and summarise the top costs; "
        "pg_stat_statements too when the server has it loaded",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile: include C frames (uvloop, asyncpg's protocol, orjson); py-spy then pauses the "
        "servers briefly at each sample, which slows them",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds a scenario may take (default 60 + N/2)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_COUNT} processes each, concurrency 4 (smoke)")
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    args = build_parser().parse_args(list(argv))
    concurrency = args.concurrency or (4 if args.quick else 16)
    for name, value in (("--count", args.count), ("--workers", args.workers), ("--repeat", args.repeat)):
        if value is not None and value < 1:
            build_parser().error(f"{name} must be at least 1")
    if concurrency < 1:
        build_parser().error("--concurrency must be at least 1")
    return Options(
        scenarios=args.scenarios,
        count=args.count,
        concurrency=concurrency,
        workers=args.workers,
        json_path=args.json_path,
        compare_path=args.compare_path,
        quick=args.quick,
        repeat=args.repeat,
        profile_dir=args.profile_dir,
        timeout=args.timeout,
        native=args.native,
    )
