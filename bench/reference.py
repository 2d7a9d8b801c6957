"""`python -m bench.reference` (`just bench-reference`): this project and orchestrator-core 5.5 side by side.

CPU speed on a shared machine changes several-fold within an hour, so a ratio means something only when both
sides ran in the same minutes. This run installs orchestrator-core 5.5 from PyPI into its own cached virtualenv,
gives each system its own fresh database (ours: our migrations; orchestrator-core's: its migrations and its
workflow rows, see bench/reference_app), serves both APIs in threadpool mode, and drives both with the same load
client, alternating scenario by scenario and round by round. `bench.ratios` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.console import BenchError, note
from bench.database import (
    Database,
    Monitor,
    Stats,
    connect,
    create_database,
    database_name,
    provision_database,
    quiesce,
    redact,
    with_database,
)
from bench.options import Options
from bench.processes import Launcher, Stack, free_port, spawn
from bench.ratios import REFERENCE_SCENARIOS, cpu_loop_seconds, print_table, save_partial, summarise
from bench.report import machine_info
from bench.resources import Resources
from bench.scenarios import Scenarios, Window
from orchestrator.settings import load_settings

REFERENCE_REQUIREMENT = "orchestrator-core==5.5.*"
APP_DIR = Path(__file__).resolve().parent / "reference_app"
ROUND_ATTEMPTS = 3
DEFAULT_VENV = Path.home() / ".cache" / "orchestrator-bench" / "ref-venv"
REFERENCE_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
"""The only variables of the bench's environment orchestrator-core's API sees: our settings (MAX_WORKERS,
DATABASE_URI, ...) have the same names as some of its own."""


def reference_venv() -> Path:
    """The cached virtualenv with orchestrator-core 5.5 and uvicorn (created with pip on first use)."""
    venv = Path(os.environ.get("BENCH_REFERENCE_VENV", DEFAULT_VENV))
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import orchestrator.core, uvicorn"]  # from APP_DIR: not our `orchestrator`
    if python.exists() and subprocess.run(probe, cwd=APP_DIR, capture_output=True, check=False).returncode == 0:  # noqa: S603
        return python
    note(f"installing {REFERENCE_REQUIREMENT} into {venv} (once; cached)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
        subprocess.run(  # noqa: S603
            [str(python), "-m", "pip", "install", "-q", REFERENCE_REQUIREMENT, "uvicorn[standard]"], check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"could not install {REFERENCE_REQUIREMENT} into {venv}: {exc}") from None
    return python


def reference_env(dsn: str) -> dict[str, str]:
    """orchestrator-core's settings for the bench: its defaults, threadpool, no OAuth2 (ours has none either)."""
    env = {k: v for k, v in os.environ.items() if k in REFERENCE_ENV_KEEP}
    env.update(
        DATABASE_URI=dsn.replace("postgresql://", "postgresql+psycopg://", 1),
        EXECUTOR="threadpool",
        OAUTH2_ACTIVE="false",
        OAUTH2_AUTHORIZATION_ACTIVE="false",
        LOG_LEVEL="INFO",
        # Its search indexer imports LiteLLM, which otherwise fetches a price list from GitHub (three tries, ~10 s
        # of retries when offline) on first use.
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    return env


class ReferenceLauncher(Launcher):
    """Starts orchestrator-core's API (uvicorn, one process, threadpool executor) on the reference database."""

    def __init__(self, python: Path, dsn: str, run_id: str, log_dir: Path) -> None:
        super().__init__(None, dsn, run_id, 0, log_dir)
        self.python = python

    async def start_stack(self, layout: str) -> Stack:
        port = free_port()
        args = [str(self.python), "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)]
        server = spawn("reference-api", args, reference_env(self.dsn), self.log_dir, cwd=APP_DIR)
        self.live.append(server)
        stack = Stack([server], f"http://127.0.0.1:{port}")
        await self._wait_ready(stack, "threadpool", timeout=120.0)
        return stack


async def provision_reference(python: Path, ours: Database, run_id: str, log_dir: Path) -> Database:
    """A fresh database on the same server as ours, with orchestrator-core's migrations and workflow rows."""
    if not ours.dedicated:
        raise BenchError("the reference needs a fresh database on a local PostgreSQL: unset DATABASE_URI")
    name = f"benchref_{run_id}"
    admin = ours.stats_dsn
    drop = await create_database(admin, name)
    dsn = with_database(admin, name)
    database = Database(dsn, admin, f"fresh database {name} on {redact(admin)}", drop, True)
    log = log_dir / "reference-migrate.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(python), "migrate.py", cwd=APP_DIR, env=reference_env(dsn), stdout=out, stderr=subprocess.STDOUT
        )
        status = await process.wait()
    if status != 0:
        await drop()
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"orchestrator-core's migrations failed (status {status}):\n{tail}")
    return database


@dataclass
class System:
    """One side of the comparison: its database, its API launcher and the scenarios run against it."""

    label: str
    db: Database
    launcher: Launcher
    scenarios: Scenarios
    stats: Stats


async def open_system(label: str, db: Database, launcher: Launcher, options: Options) -> System:
    stats = Stats(await connect(db.stats_dsn), database_name(db.dsn), db.stats_dsn == db.dsn)
    return System(label, db, launcher, Scenarios(options, stats, launcher), stats)


async def measure(system: System, stack: Stack, scenario: str, n: int, warmup: int) -> dict[str, Any]:
    """One scenario after a vacuum and checkpoint of the system's database: a warm-up, then the measured run."""
    await quiesce(system.db.dsn)
    monitor = await Monitor.open(system.db.dsn)
    try:
        runner = system.scenarios[scenario]
        await runner(stack, monitor, warmup, None)
        label = f"{system.label} {scenario}"
        window = Window(label, stack.servers, Resources(stack.servers), None, monitor)
        result: dict[str, Any] = await runner(stack, monitor, n, window)
    finally:
        await monitor.close()
    if result["errors"]:  # reported with the table; its throughput counts only the completed processes
        note(f"{system.label} {scenario}: {result['errors']} errors, e.g. {result['error_samples'][:1]}")
    return result


async def run_round(systems: list[System], round_no: int, options: ReferenceOptions, warmup: int) -> dict[str, Any]:
    """Both APIs up for the round (fresh servers each round), the scenarios alternating between them: which
    system goes first alternates scenario by scenario and round by round."""
    stacks = [await system.launcher.start_stack("threadpool") for system in systems]
    measured: dict[str, dict[str, Any]] = {s.label: {} for s in systems}
    try:
        for index, scenario in enumerate(REFERENCE_SCENARIOS):
            pairs = list(zip(systems, stacks, strict=True))
            for system, stack in pairs if (round_no + index) % 2 == 0 else pairs[::-1]:
                note(f"round {round_no + 1}/{options.repeat}: {scenario}, {system.label}")
                n = options.counts[scenario]
                measured[system.label][scenario] = await measure(system, stack, scenario, n, warmup)
    finally:
        for system, stack in zip(systems, stacks, strict=True):
            await system.launcher.stop_stack(stack)
    return measured


@dataclass
class ReferenceOptions:
    counts: dict[str, int]
    concurrency: int
    repeat: int
    json_path: Path | None
    timeout: float | None
    quick: bool


def parse_options(argv: Sequence[str]) -> ReferenceOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference",
        description="This project and orchestrator-core 5.5 (installed from PyPI into a cached virtualenv, "
        f"{DEFAULT_VENV} or BENCH_REFERENCE_VENV) side by side in one run, on two fresh databases of the local "
        "PostgreSQL (BENCH_PG_ADMIN_URI), alternating scenario by scenario; prints each ratio with its spread.",
    )
    parser.add_argument("-n", "--starts", type=int, default=200, help="starts per throughput scenario (200)")
    parser.add_argument("--resumes", type=int, default=100, help="suspended processes resumed (100)")
    parser.add_argument("--lone", type=int, default=50, help="processes one at a time (50)")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each ratio is reported with its spread (3)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, metavar="FILE", help="save the results")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a scenario may take (60 + N/2)")
    parser.add_argument("--quick", action="store_true", help="5 processes each, one round, concurrency 4 (smoke)")
    args = parser.parse_args(list(argv))
    for name in ("starts", "resumes", "lone", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    counts = {"threadpool": args.starts, "threadpool_task": args.starts, "resume": args.resumes, "latency": args.lone}
    if args.quick:
        counts = dict.fromkeys(counts, 5)
    return ReferenceOptions(
        counts=counts,
        concurrency=4 if args.quick else args.concurrency,
        repeat=1 if args.quick else args.repeat,
        json_path=args.json_path,
        timeout=args.timeout,
        quick=args.quick,
    )


async def run_reference(options: ReferenceOptions) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:10]
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"orchestrator-bench-reference-{run_id}"  # noqa: S108
    log_dir.mkdir(parents=True)
    scenario_options = Options(
        scenarios=list(REFERENCE_SCENARIOS),
        count=None,
        concurrency=options.concurrency,
        workers=1,
        json_path=None,
        compare_path=None,
        quick=options.quick,
        repeat=options.repeat,
        profile_dir=None,
        timeout=options.timeout,
    )
    python = await asyncio.to_thread(reference_venv)
    results: dict[str, Any] = {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "options": {"counts": options.counts, "concurrency": options.concurrency, "repeat": options.repeat},
        "cpu_loop_s": [await asyncio.to_thread(cpu_loop_seconds)],
        "rounds": [],
    }
    systems: list[System] = []
    databases: list[Database] = []
    try:
        ours_db = await provision_database(run_id)
        databases.append(ours_db)
        ref_db = await provision_reference(python, ours_db, run_id, log_dir)
        databases.append(ref_db)
        note(f"databases: {ours_db.description}; {ref_db.description}")
        ours_launcher = Launcher(load_settings(), ours_db.dsn, run_id, 0, log_dir)
        systems.append(await open_system("ours", ours_db, ours_launcher, scenario_options))
        ref_launcher = ReferenceLauncher(python, ref_db.dsn, run_id, log_dir)
        systems.append(await open_system("orchestrator-core", ref_db, ref_launcher, scenario_options))
        for round_no in range(options.repeat):
            for attempt in range(1, ROUND_ATTEMPTS + 1):
                try:
                    results["rounds"].append(await run_round(systems, round_no, options, scenario_options.warmup))
                    break
                except (BenchError, OSError, asyncpg.PostgresError) as exc:
                    # A shared PostgreSQL at its max_connections fails orchestrator-core's runs (it opens a
                    # connection per thread): the round is run again rather than the whole run lost.
                    note(f"round {round_no + 1}, attempt {attempt} failed: {str(exc).splitlines()[0]}")
                    results["failed_attempts"] = results.get("failed_attempts", 0) + 1
            results["cpu_loop_s"].append(await asyncio.to_thread(cpu_loop_seconds))
            if options.json_path is not None:  # what a run interrupted later still leaves
                save_partial(results, options.json_path)
        if not results["rounds"]:
            raise BenchError("no round completed")
    finally:
        for system in systems:
            system.launcher.kill_all()
            await system.stats.conn.close()
        for database in databases:
            if database.drop is not None:
                try:
                    await database.drop()
                except (OSError, asyncpg.PostgresError) as exc:
                    note(f"could not drop {database.description}: {exc}")
    results["summary"] = summarise(results["rounds"])
    note(f"server logs in {log_dir}")
    return results


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    task_result: dict[str, Any] = {}

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        task_result.update(await run_reference(options))

    started = time.monotonic()
    try:
        asyncio.run(run())
    except BenchError as exc:
        note(f"bench: {exc}")
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        note("bench: interrupted; servers stopped, bench databases dropped")
        return 130
    task_result["wall_s"] = round(time.monotonic() - started, 1)
    print_table(task_result, options.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
