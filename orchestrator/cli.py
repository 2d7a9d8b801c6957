"""The `orchestrator` command.

    orchestrator serve [--host H] [--port P] [--workflows MOD,...]   the HTTP API (and the threadpool executor)
    orchestrator run [WORKFLOW] [--input JSON] [--resume JSON ...]   run one process end to end and print it
    orchestrator db upgrade | db status                              migrations
    orchestrator celery-shim                                         translate Celery messages to our workers
    orchestrator bench [...]                                         benchmarks

Bad settings or arguments print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from orchestrator.exceptions import OrchestratorError, SettingsError

EXAMPLES_MODULE = "orchestrator.examples.workflows"
PENDING_MIGRATIONS = 3
"""Exit status of `db status` when a migration is pending (lets an init container wait for the migration job)."""


def _json_page(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a form page must be a JSON object")
    return value


def _modules(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Async-native workflow orchestrator (orchestrator-core compatible). Settings come from the "
        "environment and .env (EXECUTOR, DATABASE_URI, MAX_WORKERS, WORKFLOW_MODULES, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API under uvicorn (uvloop)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--workflows",
        type=_modules,
        default=None,
        metavar="MOD,...",
        help="workflow modules to import (adds to WORKFLOW_MODULES)",
    )

    run = sub.add_parser("run", help="start one process, answer its input steps, wait for the end, print it")
    run.add_argument(
        "workflow", nargs="?", default="provision_port", help="workflow key (default: the example provision_port)"
    )
    run.add_argument(
        "--workflows",
        type=_modules,
        default=None,
        metavar="MOD,...",
        help=f"workflow modules to import (default {EXAMPLES_MODULE} when WORKFLOW_MODULES is empty)",
    )
    run.add_argument(
        "--input",
        type=_json_page,
        action="append",
        default=None,
        metavar="JSON",
        help="a page of the initial form (repeat for several pages)",
    )
    run.add_argument(
        "--resume",
        type=_json_page,
        action="append",
        default=None,
        metavar="JSON",
        help="the input for each input step, in order (repeatable)",
    )
    run.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the process (default 60)")

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply pending migrations (safe to run concurrently)")
    db_sub.add_parser("status", help="list migrations and whether they are applied; exit status 3 if any is pending")

    sub.add_parser("celery-shim", help="consume orchestrator-core's Celery messages and dispatch them to our workers")

    bench = sub.add_parser("bench", help="run the benchmarks (see `orchestrator bench --help`)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse's REMAINDER drops or reorders options that start with "-" (`bench -n 5`): the bench parses its own.
    bench_args = argv[1:] if argv[:1] == ["bench"] else None
    args = parser.parse_args(argv[:1] if bench_args is not None else argv)
    if bench_args is not None:
        args.bench_args = bench_args
    from orchestrator import log
    from orchestrator.settings import load_settings

    try:
        settings = load_settings()
        log.configure(settings.LOG_FORMAT, settings.LOG_LEVEL)
        code = _dispatch(args, settings)
    except SettingsError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        sys.exit(2)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


def _dispatch(args: argparse.Namespace, settings: Any) -> int:
    if args.command == "serve":
        from orchestrator.http.server import serve

        if args.workflows:
            settings.WORKFLOW_MODULES = [*settings.WORKFLOW_MODULES, *args.workflows]
        return int(serve(settings, host=args.host, port=args.port))
    if args.command == "run":
        modules = args.workflows or settings.WORKFLOW_MODULES or [EXAMPLES_MODULE]
        settings.WORKFLOW_MODULES = modules
        return _run_async(_run_one(settings, args))
    if args.command == "db":
        return _run_async(_db(settings, args.db_command))
    if args.command == "celery-shim":
        from orchestrator.celery_shim import run_shim

        return int(run_shim(settings))
    if args.command == "bench":
        try:
            from orchestrator.bench import main as bench_main
        except ImportError as exc:
            missing = f"the benchmarks need the dev extras ({exc.name} is missing): pip install -e '.[dev]'"
            raise SettingsError(missing) from None

        return int(bench_main(args.bench_args))
    raise AssertionError(args.command)


def _run_async(coro: Any) -> int:
    try:
        import uvloop

        result: int = uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        result = asyncio.run(coro)
    return result


async def _db(settings: Any, action: str) -> int:
    from orchestrator.persistence import database, migrations

    location = await asyncio.to_thread(database.locate, settings.DATABASE_URI, settings.EMBEDDED_DATA_DIR)
    print(f"database: {location.describe()}")
    conn = await database.connect(location.dsn)
    try:
        if action == "upgrade":
            applied = await migrations.upgrade(conn)
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
            print("database is up to date" if not applied else f"{len(applied)} migration(s) applied")
            return 0
        listed = await migrations.status(conn)
        for m, done in listed:
            print(f"{m.version:04d}_{m.name}: {'applied' if done else 'pending'}")
        return 0 if all(done for _, done in listed) else PENDING_MIGRATIONS
    finally:
        await conn.close()


async def _run_one(settings: Any, args: argparse.Namespace) -> int:
    from orchestrator import services
    from orchestrator.dsl.types import RUN_ENDED_STATUSES, ProcessStatus
    from orchestrator.runtime.orchestrator import Orchestrator

    inputs = args.input
    resumes = list(args.resume or [])
    if args.workflow == "provision_port" and inputs is None:
        inputs, resumes = [{"customer": "ACME", "speed_gbps": 10}], resumes or [{"approved": True}]
    async with Orchestrator(settings) as orch:
        print(f"database: {orch.location.describe() if orch.location else '?'}; executor: {settings.EXECUTOR.value}")
        pid = await services.start_process(args.workflow, inputs or [{}], user="cli", orchestrator=orch)
        print(f"started {args.workflow}: process {pid}")
        deadline = time.monotonic() + args.timeout
        while True:
            process = await services.get_process(pid, orchestrator=orch)
            status = process["last_status"]
            if status == ProcessStatus.SUSPENDED and resumes:
                print(f"suspended at {process['last_step']!r}; resuming")
                await services.resume_process(pid, [resumes.pop(0)], user="cli", orchestrator=orch)
            elif status in RUN_ENDED_STATUSES:
                break
            if time.monotonic() > deadline:
                print(f"timed out; process is {status}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.02)
        for row in process["steps"]:
            print(f"  {row['status']:>17}  {row['name']}")
        print(f"process {pid} ended {status}")
        print(json.dumps(process["current_state"], indent=2, default=str))
        return 0 if status == ProcessStatus.COMPLETED else 1


if __name__ == "__main__":  # pragma: no cover
    main()
