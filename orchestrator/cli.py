"""The `orchestrator` command.

    orchestrator serve [--host H] [--port P] [--workflows MOD,...]   the HTTP API (and the threadpool executor)
    orchestrator run [WORKFLOW] [--input JSON] [--resume JSON ...]   run one process end to end and print it
    orchestrator db upgrade | db status                              migrations
    orchestrator db prune --completed-older-than AGE [--tasks-only] [--dry-run]   retention
    orchestrator schedules list | add WORKFLOW ... | remove ID       schedules that start workflows by themselves
    orchestrator celery-shim                                         translate Celery messages to our workers

A user error (a bad setting, argument or form input, an unknown database, role, workflow or workflow module, an
unreachable server) prints one line naming it and the fix, and exits with status 2; `--debug` (or LOG_LEVEL=DEBUG)
adds its traceback. A refused action (engine paused, run predicate) exits with status 1, as does a run that does
not complete. Anything else is a bug: its traceback is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

from orchestrator.exceptions import (
    InvalidWorkflowError,
    OrchestratorError,
    ScheduleError,
    ScheduleNotFoundError,
    SettingsError,
    WorkflowNotFoundError,
)

EXAMPLES_MODULE = "orchestrator.examples.workflows"
PENDING_MIGRATIONS = 3
"""Exit status of `db status` when a migration is pending (lets an init container wait for the migration job)."""
USER_ERROR = 2

DATABASE_SETTINGS = ("DATABASE_URI", "EMBEDDED_DATA_DIR")
LOG_SETTINGS = ("LOG_FORMAT", "LOG_LEVEL")
QUEUE_SETTINGS = ("BROKER_URL", "TASKS_QUEUE", "WORKFLOWS_QUEUE", "TARGET_QUEUES")
RUNTIME_SETTINGS = (
    *DATABASE_SETTINGS,
    "MIGRATE_ON_START",
    "DB_POOL_SIZE",
    "DB_SYNCHRONOUS_COMMIT",
    "EXECUTOR",
    "MAX_WORKERS",
    "MAX_BRANCHES",
    "WORKFLOW_MODULES",
    "LEASE_TTL_SECONDS",
    "SWEEP_INTERVAL_SECONDS",
    "REDISPATCH_AFTER_SECONDS",
    "RETRY_WAITING_AFTER_SECONDS",
    "SHUTDOWN_TIMEOUT_SECONDS",
    *QUEUE_SETTINGS,
)
SETTINGS_READ = {
    "serve": (*RUNTIME_SETTINGS, "API_TOKEN", "MAX_BODY_BYTES", *LOG_SETTINGS),
    "run": (*RUNTIME_SETTINGS, *LOG_SETTINGS),
    "db": (*DATABASE_SETTINGS, *LOG_SETTINGS),
    "schedules": (*DATABASE_SETTINGS, "WORKFLOW_MODULES", *LOG_SETTINGS),
    "celery-shim": (
        *DATABASE_SETTINGS,
        "DB_POOL_SIZE",
        "CELERY_BROKER_URL",
        "CELERY_QUEUES",
        "CELERY_PREFETCH",
        *QUEUE_SETTINGS,
        "SHUTDOWN_TIMEOUT_SECONDS",
        *LOG_SETTINGS,
    ),
}
"""The settings each command reads, listed in its --help."""


class CommandError(Exception):
    """A user error found by the command itself (bad form input, unknown workflow key); exit status 2."""


def _settings_epilog(command: str) -> str:
    return f"settings read (environment or .env): {', '.join(SETTINGS_READ[command])}"


def _json_page(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a form page must be a JSON object")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535, or 0 for any free port")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return seconds


def _age(text: str) -> timedelta:
    from orchestrator.settings import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{age.total_seconds():g}s"


def _modules(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Async-native workflow orchestrator (orchestrator-core compatible). Settings come from the "
        "environment and .env (EXECUTOR, DATABASE_URI, MAX_WORKERS, WORKFLOW_MODULES, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="log at DEBUG level and show the traceback of any error (for bug reports)"
    )

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], epilog=_settings_epilog(name))

    serve = command("serve", "run the HTTP API under uvicorn (uvloop)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default 8080; 0: any free port)")
    serve.add_argument(
        "--workflows",
        type=_modules,
        default=None,
        metavar="MOD,...",
        help="workflow modules to import (adds to WORKFLOW_MODULES)",
    )

    run = command("run", "start one process, answer its input steps, wait for the end, print it")
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
    run.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for the process (default 60)")

    db = command("db", "database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for action, text in (
        ("upgrade", "apply pending migrations (safe to run concurrently)"),
        ("status", "list migrations and whether they are applied; exit status 3 if any is pending"),
    ):
        db_sub.add_parser(action, help=text, parents=[common], epilog=_settings_epilog("db"))
    prune = db_sub.add_parser(
        "prune",
        help="delete completed processes older than an age, in small batches beside live traffic",
        parents=[common],
        epilog=_settings_epilog("db"),
    )
    prune.add_argument(
        "--completed-older-than",
        type=_age,
        required=True,
        metavar="AGE",
        help="last changed longer ago than AGE: 30d, 12h, 90m or seconds",
    )
    prune.add_argument("--tasks-only", action="store_true", help="delete completed tasks only")
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    _schedules_parser(command("schedules", "list, add and remove schedules"), common)

    command("celery-shim", "consume orchestrator-core's Celery messages and dispatch them to our workers")
    return parser


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a schedule id (a UUID): {text!r}") from None


def _schedules_parser(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="every schedule with its next and last run", parents=[common])
    add = actions.add_parser("add", help="start WORKFLOW on an interval, a cron expression or once", parents=[common])
    add.add_argument("workflow", help="the workflow's (or task's) key")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--interval", type=_seconds, metavar="SECONDS", help="every SECONDS seconds")
    when.add_argument("--cron", metavar="EXPR", help='a five-field cron expression, e.g. "0 3 * * *"')
    when.add_argument("--date", metavar="ISO", help="once, at this ISO 8601 time (UTC unless it has an offset)")
    add.add_argument("--timezone", default="UTC", help="time zone of --cron and of a --date without offset")
    add.add_argument("--name", help="the schedule's name (default: the workflow's key)")
    add.add_argument("--input", type=_json_page, action="append", metavar="JSON", help="an initial form page")
    add.add_argument(
        "--no-uncompleted-instance", action="store_true", help="skip a tick while the previous one's process runs"
    )
    remove = actions.add_parser("remove", help="delete a schedule (its processes stay)", parents=[common])
    remove.add_argument("schedule_id", type=_uuid, help="the schedule's id (see `schedules list`)")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    debug: bool = args.debug
    from orchestrator import log
    from orchestrator.settings import load_settings

    try:
        settings = load_settings()
        debug = debug or settings.LOG_LEVEL == "DEBUG"
        log.configure(settings.LOG_FORMAT, "DEBUG" if debug else _log_level(args.command, settings))
        code = _dispatch(args, settings)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        status = _exit_status(exc)
        if status is None:
            raise
        if debug:
            traceback.print_exception(exc)
        print(f"orchestrator: {_explain(exc)}", file=sys.stderr)
        sys.exit(status)
    sys.exit(code)


def _log_level(command: str, settings: Any) -> str:
    """`run` on the console prints its own account of the run; unless LOG_LEVEL is set, warnings only."""
    from orchestrator.settings import LogFormat

    if command == "run" and settings.LOG_FORMAT is LogFormat.CONSOLE and "LOG_LEVEL" not in settings.model_fields_set:
        return "WARNING"
    return str(settings.LOG_LEVEL)


def _exit_status(exc: Exception) -> int | None:
    """2 for a user error, 1 for a refused action, None for a bug (its traceback is shown)."""
    user_errors = (CommandError, SettingsError, InvalidWorkflowError, WorkflowNotFoundError)
    if isinstance(exc, (*user_errors, ScheduleError, ScheduleNotFoundError)):
        return USER_ERROR
    if isinstance(exc, OrchestratorError):
        return 1
    return None


def _explain(exc: Exception) -> str:
    if isinstance(exc, InvalidWorkflowError) and isinstance(exc.__cause__, ModuleNotFoundError):
        return f"{exc}; correct --workflows or WORKFLOW_MODULES, or make the module importable (PYTHONPATH)"
    return str(exc)


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
    if args.command == "db" and args.db_command == "prune":
        return _run_async(_prune(settings, args))
    if args.command == "db":
        return _run_async(_db(settings, args.db_command))
    if args.command == "schedules":
        return _run_async(_schedules(settings, args))
    if args.command == "celery-shim":
        from orchestrator.celery_shim import run_shim

        return int(run_shim(settings))
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


async def _prune(settings: Any, args: argparse.Namespace) -> int:
    from orchestrator import services

    async with services.Orchestrator(settings, run_processes=False) as orch:
        pruned = await services.prune(
            args.completed_older_than, tasks_only=args.tasks_only, dry_run=args.dry_run, orchestrator=orch
        )
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {pruned.workflows} completed workflow process(es) and {pruned.tasks} task(s) last changed more "
        f"than {_age_text(args.completed_older_than)} ago, with {pruned.steps} step row(s)"
    )
    return 0


def _trigger_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.interval is not None:
        return "interval", {"seconds": args.interval}
    if args.cron is not None:
        return "cron", {"expression": args.cron, "timezone": args.timezone}
    return "date", {"run_date": args.date, "timezone": args.timezone}


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


async def _schedules(settings: Any, args: argparse.Namespace) -> int:
    from orchestrator import services

    async with services.Orchestrator(settings, run_processes=False) as orch:
        if args.schedules_command == "list":
            for row in await services.list_schedules(orchestrator=orch):
                given = json.dumps(row["trigger_kwargs"], sort_keys=True)
                print(
                    f"{row['schedule_id']}  {row['name']}  {row['workflow_name']}  {row['trigger']} {given}  "
                    f"next {_when(row['next_run_at'])}  last {_when(row['last_run_at'])}"
                )
            return 0
        if args.schedules_command == "add":
            trigger, kwargs = _trigger_of(args)
            row = await services.create_schedule(
                args.workflow,
                trigger,
                kwargs,
                name=args.name,
                user_inputs=args.input,
                no_uncompleted_instance=args.no_uncompleted_instance,
                orchestrator=orch,
            )
            print(f"added {row['schedule_id']} ({row['name']}): next run {_when(row['next_run_at'])}")
            return 0
        await services.delete_schedule(args.schedule_id, orchestrator=orch)
        print(f"removed {args.schedule_id}")
        return 0


async def _run_one(settings: Any, args: argparse.Namespace) -> int:
    from orchestrator import services
    from orchestrator.dsl.forms import FormNotCompleteError, FormOverflowError, FormValidationError
    from orchestrator.dsl.types import RUN_ENDED_STATUSES, ProcessStatus
    from orchestrator.runtime.orchestrator import Orchestrator

    form_errors = (FormValidationError, FormNotCompleteError, FormOverflowError)
    inputs = args.input
    resumes = list(args.resume or [])
    if args.workflow == "provision_port" and inputs is None:
        inputs, resumes = [{"customer": "ACME", "speed_gbps": 10}], resumes or [{"approved": True}]
    async with Orchestrator(settings) as orch:
        print(f"database: {orch.location.describe() if orch.location else '?'}; executor: {settings.EXECUTOR.value}")
        try:
            pid = await services.start_process(args.workflow, inputs or [{}], user="cli", orchestrator=orch)
        except WorkflowNotFoundError as exc:
            known = ", ".join(sorted(orch.registry)) or "none"
            raise CommandError(f"{exc} (workflows loaded: {known}; load others with --workflows MODULE)") from exc
        except form_errors as exc:
            raise CommandError(f"invalid --input for {args.workflow}: {_form_problem(exc)}") from exc
        print(f"started {args.workflow}: process {pid}")
        deadline = time.monotonic() + args.timeout
        while True:
            process = await services.get_process(pid, orchestrator=orch)
            status = process["last_status"]
            if status == ProcessStatus.SUSPENDED and resumes:
                print(f"suspended at {process['last_step']!r}; resuming")
                try:
                    await services.resume_process(pid, [resumes.pop(0)], user="cli", orchestrator=orch)
                except form_errors as exc:
                    step = process["last_step"]
                    problem = _form_problem(exc)
                    raise CommandError(f"invalid --resume for {step!r}: {problem}; process {pid} waits there") from exc
            elif status in RUN_ENDED_STATUSES:
                break
            if time.monotonic() > deadline:
                waiting = f"timed out after {args.timeout:g} s; process {pid} is {status}"
                if settings.EXECUTOR.value == "dramatiq":
                    waiting += " (EXECUTOR=dramatiq: workers run it; are they running, and BROKER_URL reachable?)"
                print(waiting, file=sys.stderr)
                return 1
            await asyncio.sleep(0.02)
        for row in process["steps"]:
            print(f"  {row['status']:>17}  {row['name']}")
        print(f"process {pid} ended {status}")
        print(json.dumps(process["current_state"], indent=2, default=str))
        if status == ProcessStatus.SUSPENDED:
            fields = ", ".join((process["form"] or {}).get("properties", {})) or "none"
            print(
                f"hint: it waits for input at {process['last_step']!r} (fields: {fields}); give it with "
                f"`orchestrator run {args.workflow} --resume JSON` (one --resume per input step)",
                file=sys.stderr,
            )
        return 0 if status == ProcessStatus.COMPLETED else 1


def _form_problem(exc: Exception) -> str:
    """A form error in one line: each invalid field with pydantic's message, or what the form still needs."""
    from orchestrator.dsl.forms import FormNotCompleteError, FormValidationError

    if isinstance(exc, FormValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'page'}: {error['msg']} (got {error.get('input')!r})"
            for error in exc.errors
        )
    if isinstance(exc, FormNotCompleteError):
        fields = ", ".join(exc.form.get("properties", {})) or "none"
        return f"the form has another page (fields: {fields}); add one more page"
    return "more pages than the form has"


if __name__ == "__main__":  # pragma: no cover
    main()
