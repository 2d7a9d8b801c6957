"""`orchestrator bench`: end-to-end benchmarks against real servers, driven from outside as a user would.

Why end to end: the figure a user meets includes the HTTP layer, the PostgreSQL round trips, the broker and the
logging, so every scenario starts the real programs as subprocesses (`orchestrator serve`, `dramatiq
orchestrator.actors`, `orchestrator celery-shim`), drives them over HTTP (or with a real Celery client), and
observes completion where a user would: `processes.last_status` in PostgreSQL. Each scenario gets fresh servers,
so its CPU, memory and transaction counts are its own.

Transactions per process come from `pg_stat_database` of the bench database. PostgreSQL flushes a backend's
counters at most once a second (and the rest ten seconds after it goes idle), so they are read only once every
backend of the run has exited; the bench's own statements and the servers' fixed start/stop cost (measured once
per server layout) are subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

from orchestrator import bench_fanout
from orchestrator.dsl.types import RUN_ENDED_STATUSES, ProcessStatus
from orchestrator.persistence import migrations
from orchestrator.settings import load_settings

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
WORKFLOWS_MODULE = "orchestrator.examples.workflows"
EMPTY_FORM = b"[{}]"
JSON_HEADERS = {"content-type": "application/json"}
BENCH_USER = "bench"
MARK = "/* orchestrator-bench */"
"""Tags the bench's own SQL, so that pg_stat_statements summaries can leave it out."""

_POLL = f"""{MARK} SELECT pid, last_status, started_at, last_modified_at FROM processes
 WHERE pid = ANY($1::uuid[]) AND last_status = ANY($2::text[])"""

ENDED = frozenset(s.value for s in RUN_ENDED_STATUSES)
SUSPENDED_OR_ENDED = ENDED | {ProcessStatus.SUSPENDED.value}


class BenchError(Exception):
    """A benchmark could not run (a server did not start, a timeout): one line for the user."""


# --------------------------------------------------------------------------------------------------- small helpers


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 by linear interpolation between closest ranks (None when there is no value)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = (len(ordered) - 1) * q
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return {"p50": round(at(0.50), 3), "p95": round(at(0.95), 3), "p99": round(at(0.99), 3)}


def with_database(uri: str, name: str) -> str:
    """The same server URI with another database (works for host URIs and `?host=/socket` ones)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_name(uri: str) -> str:
    return urlsplit(uri).path.lstrip("/") or "postgres"


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal (no dependency for ten lines)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        sys.stderr.write(f"\r{self.label:<18} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


async def wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            return
        await asyncio.sleep(0.05)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- options


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
        prog="orchestrator bench",
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


# --------------------------------------------------------------------------------------------------- the database


@dataclass
class Database:
    dsn: str
    stats_dsn: str
    """Where `pg_stat_database` is read from: another database of the server when possible, so that reading the
    counters does not add to them."""
    description: str
    drop: Callable[[], Awaitable[None]] | None = None
    dedicated: bool = False


async def _connect(dsn: str, timeout: float = 5.0) -> Any:
    return await asyncpg.connect(dsn, timeout=timeout)


async def _create_database(admin_dsn: str, name: str) -> Callable[[], Awaitable[None]]:
    admin = await _connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()

    async def drop() -> None:
        conn = await _connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    return drop


async def provision_database(run_id: str) -> Database:
    """DATABASE_URI if set; else a fresh database on the local server; else one on the embedded PostgreSQL."""
    settings = load_settings()
    name = f"bench_{run_id}"
    if settings.DATABASE_URI:
        dsn = settings.DATABASE_URI
        database = Database(dsn, dsn, f"DATABASE_URI ({redact(dsn)})")
    else:
        admin = os.environ.get("BENCH_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            drop = await _create_database(admin, name)
            dsn = with_database(admin, name)
            database = Database(dsn, admin, f"fresh database {name} on {redact(admin)}", drop, True)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            note(f"local PostgreSQL at {redact(admin)} not usable ({exc}); starting the embedded one")
            from orchestrator.persistence import database as db

            location = await asyncio.to_thread(db.locate, None, settings.EMBEDDED_DATA_DIR)
            drop = await _create_database(location.dsn, name)
            dsn = with_database(location.dsn, name)
            database = Database(
                dsn, location.dsn, f"fresh database {name} on the embedded PostgreSQL ({location.embedded_dir})"
            )
            database.drop, database.dedicated = drop, True
    conn = await _connect(database.dsn)
    try:
        await migrations.upgrade(conn)
    finally:
        await conn.close()
    if database.stats_dsn == database.dsn:
        sibling = with_database(database.dsn, "postgres")
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            probe = await _connect(sibling)
            await probe.close()
            database.stats_dsn = sibling
    return database


class Monitor:
    """The bench's connection to the bench database. Counts its statements: they are subtracted from the
    database's transaction count (each is one autocommit transaction)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements = 0

    @classmethod
    async def open(cls, dsn: str) -> Monitor:
        return cls(await _connect(dsn))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.statements += 1
        rows: list[Any] = await self.conn.fetch(query, *args)
        return rows

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """LISTEN; PostgreSQL 15 runs one transaction in a listening backend each time it wakes it up, for all
        the notifications then pending, so each batch received (one read: one loop tick) counts as a statement."""
        loop = asyncio.get_running_loop()
        woken = False

        def settle() -> None:
            nonlocal woken
            woken = False

        def received(*_: Any) -> None:
            nonlocal woken
            if not woken:
                woken = True
                self.statements += 1
                loop.call_soon(settle)
            callback()

        self.statements += 1
        await self.conn.add_listener(channel, received)

    async def close(self) -> None:
        await self.conn.close()


class Stats:
    """Reads `pg_stat_database` for the bench database from a connection that does not count in it."""

    def __init__(self, conn: Any, datname: str, same_database: bool) -> None:
        self.conn, self.datname, self.same_database = conn, datname, same_database
        self.rollbacks = 0

    async def backends(self) -> list[int]:
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.datname
        )
        return [r["pid"] for r in rows]

    async def settled_xacts(self, timeout: float = 15.0) -> int:
        """Commits + rollbacks once no other backend is connected (their counters are flushed at exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.backends():
                break
            await asyncio.sleep(0.05)
        previous = -1
        while True:
            row = await self.conn.fetchrow(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", self.datname
            )
            value = int(row["xact_commit"] + row["xact_rollback"])
            if value == previous or time.monotonic() > deadline:
                self.rollbacks = int(row["xact_rollback"])
                # Reading from the bench database itself: this read is one more transaction.
                return value - (1 if self.same_database else 0)
            previous = value
            await asyncio.sleep(0.1)


# --------------------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A subprocess the bench started (in its own session, so a terminal's Ctrl-C reaches only the bench)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}; last lines of {self.log_path}:\n"
                + self.log_tail()
            )

    async def stop(self, timeout: float = 40.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        await wait_exit(self.popen, timeout)
        if self.alive():
            note(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM; killing it")
            self.kill()

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Server:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Server(name, popen, log_path)


# --------------------------------------------------------------------------------------------------- resources


@dataclass
class Usage:
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def _tree_cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system + (t.children_user + t.children_system if p is procs[0] else 0.0)
    return out


class Resources:
    """CPU seconds (delta over the measured window) and peak RSS (sampled every 100 ms) of each server process,
    its children included, plus the bench client itself and the PostgreSQL backends serving the servers."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.usage = {s.name: Usage() for s in servers}
        self._cpu0: dict[str, dict[int, float]] = {}
        self._last: dict[str, dict[int, float]] = {}
        self._pg0: dict[int, float] = {}
        self._client0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self._trees: dict[str, list[psutil.Process]] = {}

    def _sample(self, refresh: bool = True) -> None:
        """RSS and CPU of each tree; the list of children (a walk of /proc) is refreshed only when asked."""
        for server in self.servers:
            if refresh or server.name not in self._trees:
                self._trees[server.name] = server.tree()
            procs = self._trees[server.name]
            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            usage = self.usage[server.name]
            usage.peak_rss_mb = max(usage.peak_rss_mb, rss / 1_048_576)
            self._last[server.name] = {**self._last.get(server.name, {}), **_tree_cpu(procs)}

    async def _run(self) -> None:
        for tick in itertools.count():
            self._sample(refresh=tick % 10 == 0)
            await asyncio.sleep(0.1)

    @staticmethod
    def _pg_cpu(pids: list[int]) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
        return out

    def start(self, pg_backends: list[int]) -> None:
        for server in self.servers:
            self._cpu0[server.name] = _tree_cpu(server.tree())
        self._pg0 = self._pg_cpu(pg_backends)
        t = psutil.Process().cpu_times()
        self._client0 = t.user + t.system
        self._task = asyncio.create_task(self._run(), name="bench-sampler")

    async def stop(self, pg_backends: list[int]) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        for server in self.servers:
            start, end = self._cpu0.get(server.name, {}), self._last.get(server.name, {})
            self.usage[server.name].cpu_s = sum(v - start.get(pid, 0.0) for pid, v in end.items())
        pg_end = self._pg_cpu(sorted(set(pg_backends) | set(self._pg0)))
        t = psutil.Process().cpu_times()
        return {
            "servers": {
                name: {"cpu_s": round(u.cpu_s, 3), "peak_rss_mb": round(u.peak_rss_mb, 1)}
                for name, u in self.usage.items()
            },
            "postgres_cpu_s": round(sum(v - self._pg0.get(pid, 0.0) for pid, v in pg_end.items()), 3),
            "client_cpu_s": round(t.user + t.system - self._client0, 3),
        }


# --------------------------------------------------------------------------------------------------- completion


@dataclass
class Seen:
    status: str
    observed: float
    started_at: datetime
    last_modified_at: datetime


class Watcher:
    """Polls `processes.last_status` of the pids handed to it until each reaches one of `until`.

    With `listen`, a NOTIFY on the events channel wakes the poll at once (one process at a time: the poll
    interval would otherwise dominate the latency seen); the status is still read from the row.
    """

    def __init__(self, monitor: Monitor, until: frozenset[str], progress: Progress, interval: float = 0.02) -> None:
        self.monitor, self.until, self.progress, self.interval = monitor, until, progress, interval
        self.pending: dict[uuid.UUID, float] = {}
        self.seen: dict[uuid.UUID, Seen] = {}
        self.sent: dict[uuid.UUID, float] = {}
        self._futures: dict[uuid.UUID, asyncio.Future[Seen]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, listen: bool = False) -> None:
        if listen:
            from orchestrator.persistence.events import EVENTS_CHANNEL

            await self.monitor.listen(EVENTS_CHANNEL, self._wake.set)
        self._task = asyncio.create_task(self._poll_forever(), name="bench-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.progress.close()

    def add(self, pid: uuid.UUID, sent_at: float) -> asyncio.Future[Seen]:
        self.pending[pid] = self.sent[pid] = sent_at
        future: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()
        self._futures[pid] = future
        self._wake.set()
        return future

    async def _poll_forever(self) -> None:
        while True:
            if self.pending:
                rows = await self.monitor.fetch(_POLL, list(self.pending), list(self.until))
                now = time.perf_counter()
                for r in rows:
                    seen = Seen(r["last_status"], now, r["started_at"], r["last_modified_at"])
                    self.seen[r["pid"]] = seen
                    self.pending.pop(r["pid"], None)
                    future = self._futures.pop(r["pid"])
                    if not future.done():
                        future.set_result(seen)
                self.progress.update(len(self.seen))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def all_seen(self, deadline: float) -> None:
        while self.pending:
            if self._task is not None and self._task.done():
                self._task.result()  # the poll failed: raise its error
            if time.monotonic() > deadline:
                rows = await self.monitor.fetch(
                    f"{MARK} SELECT last_status, count(*) AS n FROM processes WHERE pid = ANY($1::uuid[]) "
                    "GROUP BY last_status",
                    list(self.pending),
                )
                counts = ", ".join(f"{r['last_status']}: {r['n']}" for r in rows)
                raise BenchError(f"timed out with {len(self.pending)} processes not done ({counts})")
            await asyncio.sleep(0.005)
        self.progress.update(len(self.seen), force=True)


# --------------------------------------------------------------------------------------------------- load


def http_client(base_url: str | None, concurrency: int, timeout: float = 60.0) -> httpx.AsyncClient:
    """HTTP/1.1 keep-alive with `concurrency` connections. Plain http: no CA bundle is loaded (it costs the
    client ~50 ms of CPU per client)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(
        base_url=base_url or "",
        limits=limits,
        timeout=timeout,
        verify=False,  # noqa: S501 - the bench only speaks plain http to its own servers
    )


class LoadError(Exception):
    """A load request failed at the transport level (connection refused, reset, malformed reply)."""


@dataclass
class LoadResponse:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class LoadClient:
    """A lean HTTP/1.1 keep-alive client for the load (what wrk is to curl): it costs the shared 2 cores a fraction
    of httpx's CPU per request, so the measurement is of the servers, not of the client. One connection per lane;
    it speaks only what the bench sends (small JSON bodies, Content-Length replies)."""

    def __init__(self, base_url: str, concurrency: int, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._all: list[asyncio.StreamWriter] = []
        self._concurrency = concurrency

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        for writer in self._all:
            writer.close()

    async def post(self, path: str, *, content: bytes, headers: Mapping[str, str] | None = None) -> LoadResponse:
        return await self.request("POST", path, content)

    async def put(self, path: str, *, content: bytes, headers: Mapping[str, str] | None = None) -> LoadResponse:
        return await self.request("PUT", path, content)

    async def request(self, method: str, path: str, body: bytes) -> LoadResponse:
        """One request; a keep-alive connection the server closed while idle is retried once on a new one."""
        try:
            async with asyncio.timeout(self.timeout):
                for attempt in (1, 2):
                    reused = not self._idle.empty() or len(self._all) >= self._concurrency
                    connection = await self._connection()
                    try:
                        return await self._exchange(connection, method, path, body)
                    except (OSError, asyncio.IncompleteReadError) as exc:
                        if not reused or attempt == 2:
                            raise LoadError(f"{type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise LoadError(f"no answer within {self.timeout} s") from None
        raise AssertionError("unreachable")

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle.empty() and len(self._all) < self._concurrency:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
            return reader, writer
        return await self._idle.get()

    async def _exchange(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, path: str, body: bytes
    ) -> LoadResponse:
        reader, writer = connection
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            status_line, _, headers = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length, close = 0, False
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            content = await reader.readexactly(length) if length else b""
            status = int(status_line.split()[1])
        except BaseException:
            self._discard(writer)
            raise
        if close:
            self._discard(writer)
        else:
            self._idle.put_nowait(connection)
        return LoadResponse(status, content)

    def _discard(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        if writer in self._all:
            self._all.remove(writer)


async def drive(
    n: int,
    concurrency: int,
    send: Callable[[int], Awaitable[LoadResponse]],
    expect: int,
    on_ok: Callable[[int, float, LoadResponse], Awaitable[None]],
) -> list[str]:
    """Send `n` requests with at most `concurrency` in flight; return the errors (status or transport)."""
    errors: list[str] = []
    indexes = iter(range(n))

    async def lane() -> None:
        for i in indexes:  # one iterator shared by the lanes: each index is sent once
            t0 = time.perf_counter()
            try:
                response = await send(i)
            except LoadError as exc:
                errors.append(str(exc))
                continue
            if response.status_code != expect:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            await on_ok(i, t0, response)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, max(n, 1)))))
    return errors


# --------------------------------------------------------------------------------------------------- profiling


PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("structlog", "/logging/")),
    ("asyncpg", ("asyncpg",)),
    ("http (uvicorn/starlette/h11)", ("uvicorn", "starlette", "h11", "httptools", "anyio/_backends")),
    ("http (orchestrator.http)", ("orchestrator/http",)),
    ("forms/pydantic", ("pydantic", "pydantic_forms", "orchestrator/forms")),
    ("json", ("orjson", "orchestrator/jsonutil")),
    ("broker (aio-pika/dramatiq/celery)", ("aio_pika", "aiormq", "pamqp", "dramatiq", "kombu", "brokers/")),
    (
        "engine",
        (
            "orchestrator/engine",
            "orchestrator/runner",
            "orchestrator/store",
            "orchestrator/threadpool",
            "orchestrator/services",
            "orchestrator/state",
            "orchestrator/steps",
            "orchestrator/process",
            "orchestrator/outbox",
            "orchestrator/distributed",
            "orchestrator/sweeper",
            "orchestrator/celery_shim",
            "orchestrator/actors",
            "orchestrator/examples",
        ),
    ),
    ("event loop (asyncio/uvloop)", ("asyncio", "uvloop", "selectors")),
]
"""A stack counts for the category of the frame nearest its leaf that matches one (stdlib helpers such as json
or uuid called by structlog count as logging, and so on); the rest is `other`."""


def _category(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, patterns in PROFILE_CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return "other"


def summarise_pyspy(path: Path, top: int = 15) -> dict[str, Any]:
    """Top self frames and the share of each category, from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = [f for f in stack_text.split(";") if f and not f.startswith(("process ", "thread "))]
        if not stack:
            continue
        total += count
        self_counts[stack[-1]] += count
        for frame in set(stack):
            if "orchestrator/" in frame and not any(root in frame for root in ("orchestrator/cli.py", "server.py")):
                inclusive[frame] += count
        categories[_category(stack)] += count
    if not total:
        return {"samples": 0}

    def share(c: int) -> float:
        return round(100 * c / total, 1)

    return {
        "samples": total,
        "categories": {k: share(v) for k, v in categories.most_common()},
        "top_self": [{"frame": f, "pct": share(c)} for f, c in self_counts.most_common(top)],
        "top_orchestrator_inclusive": [{"frame": f, "pct": share(c)} for f, c in inclusive.most_common(top)],
    }


class Profiler:
    """py-spy on every server of a scenario (non-blocking, 100 Hz) and a pg_stat_statements diff."""

    def __init__(self, out_dir: Path, exe: str | None, statements: bool, native: bool = False) -> None:
        self.out_dir, self.exe, self.statements, self.native = out_dir, exe, statements, native
        self._spies: list[tuple[Server, subprocess.Popen[bytes], Path]] = []
        self._before: dict[int, tuple[int, float, int]] = {}

    def start(self, label: str, servers: list[Server]) -> None:
        if self.exe is None:
            return
        for server in servers:
            out = self.out_dir / f"{label}-{server.name}.txt"
            popen = subprocess.Popen(  # noqa: S603 - py-spy from PATH, our arguments
                [
                    self.exe,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    *(["--native"] if self.native else ["--nonblocking"]),  # native frames need a paused target
                    "--subprocesses",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(self.out_dir / f"{label}-{server.name}.py-spy.log").open("wb"),
                start_new_session=True,
            )
            self._spies.append((server, popen, out))

    async def stop(self) -> dict[str, Any]:
        summaries: dict[str, Any] = {}
        for _, popen, _ in self._spies:
            if popen.poll() is None:
                popen.send_signal(signal.SIGINT)
        for server, popen, out in self._spies:
            await wait_exit(popen, 20)
            if popen.poll() is None:
                popen.kill()
                popen.wait()
            summaries[server.name] = summarise_pyspy(out) if out.exists() else {"error": "py-spy wrote nothing"}
            summaries[server.name]["file"] = str(out)
        self._spies = []
        return summaries

    async def statements_snapshot(self, monitor: Monitor) -> dict[int, tuple[int, float, int, str]]:
        rows = await monitor.fetch(
            f"{MARK} SELECT queryid, calls, total_exec_time, rows, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND queryid IS NOT NULL "
            "AND toplevel"
        )
        return {r["queryid"]: (r["calls"], r["total_exec_time"], r["rows"], r["query"]) for r in rows}

    @staticmethod
    def statements_per_process(
        before: dict[int, tuple[int, float, int, str]], after: dict[int, tuple[int, float, int, str]], n: int
    ) -> float | None:
        """Top-level statements the servers sent per process (the bench's own and nested FK checks left out)."""
        calls = sum(
            c - before.get(qid, (0, 0.0, 0, ""))[0]
            for qid, (c, _, _, query) in after.items()
            if MARK not in query and "pg_stat_statements" not in query
        )
        return round(calls / n, 2) if n else None

    @staticmethod
    def statements_diff(
        before: dict[int, tuple[int, float, int, str]], after: dict[int, tuple[int, float, int, str]], top: int = 12
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for qid, (calls, total, rows, query) in after.items():
            c0, t0, r0, _ = before.get(qid, (0, 0.0, 0, ""))
            if calls - c0 <= 0 or MARK in query or "pg_stat_statements" in query:
                continue
            out.append(
                {
                    "calls": calls - c0,
                    "total_ms": round(total - t0, 1),
                    "mean_ms": round((total - t0) / (calls - c0), 3),
                    "rows": rows - r0,
                    "query": " ".join(query.split())[:160],
                }
            )
        out.sort(key=lambda d: float(d["total_ms"]), reverse=True)
        return out[:top]


# --------------------------------------------------------------------------------------------------- the bench


@dataclass
class Window:
    """What is measured around the timed part of a scenario."""

    label: str
    servers: list[Server]
    resources: Resources
    profiler: Profiler | None
    monitor: Monitor


@dataclass
class Stack:
    """The servers of one scenario and how to reach them."""

    servers: list[Server] = field(default_factory=list)
    api_url: str | None = None


class Bench:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.run_id = uuid.uuid4().hex[:10]
        self.prefix = f"bench_{self.run_id}"
        self.settings = load_settings()
        self.db: Database | None = None
        self.stats: Stats | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
        self.broker_ok = False
        self.broker_note = ""
        self.overhead: dict[str, int] = {}
        self.profiler: Profiler | None = None
        self.live: list[Server] = []
        self.failed = False
        self.own_statements = 0
        """Statements the bench ran on the bench database outside a Monitor (readiness checks)."""

    # --- setup and teardown -----------------------------------------------------------------------------------

    async def open(self) -> None:
        self.db = await provision_database(self.run_id)
        note(f"database: {self.db.description}")
        conn = await _connect(self.db.stats_dsn)
        self.stats = Stats(conn, database_name(self.db.dsn), self.db.stats_dsn == self.db.dsn)
        needs_broker = any(LAYOUT[s] != "threadpool" for s in self.options.scenarios)
        if needs_broker:
            url = urlsplit(self.settings.BROKER_URL)
            host, port = url.hostname or "127.0.0.1", url.port or 5672
            self.broker_ok = reachable(host, port)
            if not self.broker_ok:
                self.broker_note = f"RabbitMQ not reachable at {host}:{port} (BROKER_URL): start it to run this"
                note(f"note: {self.broker_note}; skipping the distributed and celery scenarios")
        if self.options.profile_dir is not None:
            self.options.profile_dir.mkdir(parents=True, exist_ok=True)
            exe = shutil.which("py-spy") or (
                str(Path(sys.executable).parent / "py-spy")
                if (Path(sys.executable).parent / "py-spy").exists()
                else None
            )
            if exe is None:
                note("note: py-spy not found (pip install py-spy); profiling the database only")
            statements = await self._statements_available()
            if not statements:
                note("note: pg_stat_statements is not loaded on this server (shared_preload_libraries); no SQL profile")
            self.profiler = Profiler(self.options.profile_dir, exe, statements, self.options.native)

    async def _statements_available(self) -> bool:
        assert self.db is not None
        monitor = await Monitor.open(self.db.dsn)
        try:
            try:
                await monitor.fetch(f"{MARK} SELECT 1 FROM pg_stat_statements LIMIT 1")
                return True
            except asyncpg.UndefinedTableError:
                if not self.db.dedicated:
                    return False
            try:
                await monitor.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                await monitor.fetch(f"{MARK} SELECT 1 FROM pg_stat_statements LIMIT 1")
                return True
            except asyncpg.PostgresError:
                return False
        finally:
            await monitor.close()

    async def close(self) -> None:
        for server in self.live:
            server.kill()
        self.live = []
        if self.stats is not None:
            await self.stats.conn.close()
        if self.db is not None and self.db.drop is not None:
            try:
                await self.db.drop()
            except (OSError, asyncpg.PostgresError) as exc:
                note(f"could not drop the bench database: {exc}")
        if self.broker_ok:
            await self._delete_queues()
        if self.failed:
            note(f"server logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _queues(self) -> dict[str, str]:
        p = self.prefix
        return {
            "WORKFLOWS_QUEUE": f"{p}_workflows",
            "TASKS_QUEUE": f"{p}_tasks",
            "CELERY_QUEUES": f"{p}_new_tasks,{p}_new_workflows,{p}_resume_tasks,{p}_resume_workflows",
        }

    async def _delete_queues(self) -> None:
        """Remove the uniquely named queues this run declared (Dramatiq's delay and dead-letter ones too)."""
        import aio_pika

        q = self._queues()
        names = [q["WORKFLOWS_QUEUE"], q["TASKS_QUEUE"], *q["CELERY_QUEUES"].split(",")]
        names += [f"{n}.{suffix}" for n in names[:2] for suffix in ("DQ", "XQ")]
        try:
            connection = await aio_pika.connect(self.settings.BROKER_URL, timeout=5)
        except Exception:  # cleanup is best effort: the broker may have gone
            return
        async with connection:
            for name in names:
                with contextlib.suppress(Exception):
                    channel = await connection.channel()
                    await channel.queue_delete(name)
                    await channel.close()

    # --- servers --------------------------------------------------------------------------------------------------

    def _env(self, executor: str) -> dict[str, str]:
        assert self.db is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update(
            DATABASE_URI=self.db.dsn,
            WORKFLOW_MODULES=WORKFLOWS_MODULE,
            EXECUTOR=executor,
            MIGRATE_ON_START="false",
            **self._queues(),
        )
        env.setdefault("LOG_FORMAT", "json")
        env.setdefault("LOG_LEVEL", "INFO")
        return env

    def _spawn(self, name: str, args: list[str], executor: str) -> Server:
        server = spawn(name, args, self._env(executor), self.log_dir)
        self.live.append(server)
        return server

    async def start_stack(self, layout: str) -> Stack:
        stack = Stack()
        py = sys.executable
        if layout in ("threadpool", "dramatiq"):
            port = free_port()
            api = self._spawn("api", [py, "-m", "orchestrator.cli", "serve", "--port", str(port)], layout)
            stack.servers.append(api)
            stack.api_url = f"http://127.0.0.1:{port}"
        if layout in ("dramatiq", "celery"):
            q = self._queues()
            for i in range(self.options.workers):
                stack.servers.append(
                    self._spawn(
                        f"worker{i + 1}",
                        [
                            py,
                            "-m",
                            "dramatiq",
                            "orchestrator.actors",
                            "-p",
                            "1",
                            "-t",
                            "8",
                            "-Q",
                            q["WORKFLOWS_QUEUE"],
                            q["TASKS_QUEUE"],
                        ],
                        "dramatiq",
                    )
                )
        if layout == "celery":
            stack.servers.append(self._spawn("shim", [py, "-m", "orchestrator.cli", "celery-shim"], "dramatiq"))
        await self._wait_ready(stack, layout)
        return stack

    async def _wait_ready(self, stack: Stack, layout: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        workers = [s for s in stack.servers if s.name.startswith("worker")]
        api_ready = stack.api_url is None
        async with http_client(None, 1, timeout=2.0) as client:
            while True:
                for server in stack.servers:
                    server.check()
                if not api_ready and stack.api_url is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        await client.get(f"{stack.api_url}/api/health")
                        api_ready = True  # any answer: uvicorn binds only after the app's start-up
                workers_ready = not workers or await self._workers_registered(workers)
                shim_ready = layout != "celery" or await self._consumed(self._queues()["CELERY_QUEUES"].split(",")[1])
                if api_ready and workers_ready and shim_ready:
                    return
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"servers not ready after {timeout:.0f} s (api {api_ready}, workers {workers_ready}, "
                        f"shim {shim_ready}); logs in {self.log_dir}"
                    )
                await asyncio.sleep(0.1)

    async def _workers_registered(self, workers: list[Server]) -> bool:
        """Each worker process has written its heartbeat (its runtime, pool and runner are open)."""
        assert self.db is not None
        pids = [p.pid for s in workers for p in s.tree()]
        conn = await _connect(self.db.dsn)
        self.own_statements += 1
        try:
            n = await conn.fetchval(f"{MARK} SELECT count(*) FROM workers WHERE os_pid = ANY($1::int[])", pids)
        finally:
            await conn.close()
        return int(n) >= len(workers)

    async def _consumed(self, queue: str) -> bool:
        import aio_pika

        try:
            connection = await aio_pika.connect(self.settings.BROKER_URL, timeout=2)
        except Exception:
            return False
        async with connection:
            try:
                channel = await connection.channel()
                declared = await channel.declare_queue(queue, passive=True)
                result = declared.declaration_result
                return bool(result.consumer_count and result.consumer_count > 0)
            except Exception:  # not declared yet
                return False

    async def stop_stack(self, stack: Stack) -> None:
        await asyncio.gather(*(s.stop() for s in stack.servers))
        for s in stack.servers:
            if s in self.live:
                self.live.remove(s)

    # --- one scenario ---------------------------------------------------------------------------------------------

    async def calibrate(self, layout: str) -> int:
        """Transactions the servers of `layout` run by starting and stopping with no load (subtracted later)."""
        if layout not in self.overhead:
            assert self.db is not None
            assert self.stats is not None
            own0 = self.own_statements
            x0 = await self.stats.settled_xacts()
            stack = await self.start_stack(layout)
            monitor = await Monitor.open(self.db.dsn)
            await monitor.close()
            await self.stop_stack(stack)
            own = self.own_statements - own0
            self.overhead[layout] = max(0, await self.stats.settled_xacts() - x0 - own)
        return self.overhead[layout]

    async def quiesce(self) -> None:
        """Vacuum and checkpoint before a scenario (as pgbench vacuums before a run), so that it does not pay for
        the dead rows and dirty pages of the scenarios before it (measured: a lone process's p50 ran 8.6-9.8 ms
        after the throughput scenarios, 4.4-6.1 ms on a fresh database)."""
        assert self.db is not None
        conn = await _connect(self.db.dsn)
        try:
            await conn.execute("VACUUM (ANALYZE)")
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # needs a superuser or pg_checkpoint
                await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def run_scenario(self, name: str) -> dict[str, Any]:
        assert self.db is not None
        assert self.stats is not None
        layout = LAYOUT[name]
        overhead = await self.calibrate(layout)
        n = self.options.n_for(name)
        await self.quiesce()
        own0 = self.own_statements
        x0 = await self.stats.settled_xacts()
        r0 = self.stats.rollbacks
        load0 = os.getloadavg()
        stack = await self.start_stack(layout)
        monitor = await Monitor.open(self.db.dsn)
        try:
            runner: Callable[[Stack, Monitor, int, Window | None], Awaitable[dict[str, Any]]]
            runner = getattr(self, f"_scenario_{name}")
            warm = await runner(stack, monitor, self.options.warmup, None)
            window = Window(name, stack.servers, Resources(stack.servers), self.profiler, monitor)
            result = await runner(stack, monitor, n, window)
        finally:
            await monitor.close()
            await self.stop_stack(stack)
        own = monitor.statements + self.own_statements - own0
        xacts = await self.stats.settled_xacts() - x0 - own - overhead
        processes = n + warm["processes"]
        result["xacts_per_process"] = round(xacts / processes, 2) if processes else None
        result["xacts"] = {
            "total": xacts,
            "rollbacks": self.stats.rollbacks - r0,
            "processes": processes,
            "server_overhead": overhead,
            "bench_own": own,
        }
        result["loadavg_before"] = [round(x, 2) for x in load0]
        return result

    def _deadline(self, n: int) -> float:
        return time.monotonic() + (self.options.timeout or 60 + n / 2)

    async def _measured(self, window: Window | None, body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run `body` inside the measured window (resources, py-spy, pg_stat_statements); a warm-up has none."""
        if window is None:
            return await body()
        assert self.stats is not None
        profiler = window.profiler
        sql_before = await profiler.statements_snapshot(window.monitor) if profiler and profiler.statements else {}
        mine = window.monitor.conn.get_server_pid()  # the bench's own backend is not the servers' cost
        window.resources.start([p for p in await self.stats.backends() if p != mine])
        if profiler is not None:
            profiler.start(window.label, window.servers)
        result = await body()
        result.update(await window.resources.stop([p for p in await self.stats.backends() if p != mine]))
        if profiler is not None:
            profile: dict[str, Any] = {}
            spy = await profiler.stop()
            if spy:
                profile["py-spy"] = spy
            if profiler.statements:
                after = await profiler.statements_snapshot(window.monitor)
                profile["sql"] = Profiler.statements_diff(sql_before, after)
                result["statements_per_process"] = Profiler.statements_per_process(sql_before, after, result["n"])
            result["profile"] = profile
        return result

    async def _starts(
        self,
        stack: Stack,
        monitor: Monitor,
        n: int,
        label: str,
        workflow: str,
        *,
        one_at_a_time: bool = False,
        body: bytes = EMPTY_FORM,
    ) -> tuple[Watcher, list[str], float, float]:
        """POST `n` starts of `workflow`; wait until each run ended. Returns (watcher, errors, t_first, t_last)."""
        assert stack.api_url is not None
        concurrency = 1 if one_at_a_time else self.options.concurrency
        watcher = Watcher(monitor, ENDED, Progress(label, n), interval=0.02)
        await watcher.start(listen=one_at_a_time)
        try:
            async with LoadClient(stack.api_url, concurrency) as client:

                async def send(_: int) -> LoadResponse:
                    return await client.post(f"/api/processes/{workflow}", content=body, headers=JSON_HEADERS)

                async def on_ok(_: int, t0: float, response: LoadResponse) -> None:
                    future = watcher.add(uuid.UUID(response.json()["id"]), t0)
                    if one_at_a_time:
                        await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))

                deadline = self._deadline(n)
                t_first = time.perf_counter()
                try:
                    errors = await drive(n, concurrency, send, 201, on_ok)
                except TimeoutError:
                    raise BenchError(f"{label}: a process did not end in time") from None
                await watcher.all_seen(deadline)
        finally:
            await watcher.stop()
        t_last = max((s.observed for s in watcher.seen.values()), default=t_first)
        return watcher, errors, t_first, t_last

    @staticmethod
    def _summary(
        n: int,
        concurrency: int,
        watcher: Watcher,
        errors: list[str],
        t_first: float,
        t_last: float,
        row_latency_ms: list[float],
    ) -> dict[str, Any]:
        statuses = Counter(s.status for s in watcher.seen.values())
        completed = statuses.get(ProcessStatus.COMPLETED.value, 0)
        wall = max(t_last - t_first, 1e-9)
        client = [(s.observed - watcher.sent[pid]) * 1000 for pid, s in watcher.seen.items()]
        return {
            "n": n,
            "concurrency": concurrency,
            "processes": n,
            "completed": completed,
            "statuses": dict(statuses),
            "errors": len(errors) + sum(v for k, v in statuses.items() if k != ProcessStatus.COMPLETED.value),
            "error_samples": errors[:3],
            "wall_s": round(wall, 3),
            "throughput": round(completed / wall, 1),
            "latency_ms": percentiles(row_latency_ms),
            "client_latency_ms": percentiles(client),
        }

    @staticmethod
    def _row_latencies(watcher: Watcher) -> list[float]:
        return [(s.last_modified_at - s.started_at).total_seconds() * 1000 for s in watcher.seen.values()]

    async def _throughput(
        self,
        stack: Stack,
        monitor: Monitor,
        n: int,
        window: Window | None,
        workflow: str,
        one_at_a_time: bool = False,
    ) -> dict[str, Any]:
        label = window.label if window else "warm-up"

        async def body() -> dict[str, Any]:
            watcher, errors, t0, t1 = await self._starts(
                stack, monitor, n, label, workflow, one_at_a_time=one_at_a_time
            )
            c = 1 if one_at_a_time else self.options.concurrency
            return self._summary(n, c, watcher, errors, t0, t1, self._row_latencies(watcher))

        return await self._measured(window, body)

    async def _scenario_threadpool(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        return await self._throughput(stack, monitor, n, window, "three_steps")

    async def _scenario_threadpool_task(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        return await self._throughput(stack, monitor, n, window, "task_three_steps")

    async def _scenario_distributed(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        result = await self._throughput(stack, monitor, n, window, "three_steps")
        result["workers"] = self.options.workers
        return result

    async def _scenario_latency(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        return await self._throughput(stack, monitor, n, window, "three_steps", one_at_a_time=True)

    async def _scenario_distributed_latency(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        result = await self._throughput(stack, monitor, n, window, "three_steps", one_at_a_time=True)
        result["workers"] = self.options.workers
        return result

    async def _scenario_fanout(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        label = window.label if window else "warm-up"

        async def starts(count: int, workflow: str, body: bytes) -> tuple[dict[str, Any], list[uuid.UUID]]:
            watcher, errors, t0, t1 = await self._starts(stack, monitor, count, label, workflow, body=body)
            summary = self._summary(count, self.options.concurrency, watcher, errors, t0, t1, [])
            summary["latency_ms"] = percentiles(self._row_latencies(watcher))
            return summary, list(watcher.seen)

        return await self._measured(window, lambda: bench_fanout.measure(starts, monitor, n, self.options.quick))

    async def _scenario_distributed_fanout(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        result = await self._scenario_fanout(stack, monitor, n, window)
        result["workers"] = self.options.workers
        return result

    async def _scenario_resume(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        """Start N (not measured), wait until all are suspended, then resume all over HTTP: measured to completed."""
        assert stack.api_url is not None
        c = self.options.concurrency
        label = window.label if window else "warm-up"
        suspended = Watcher(monitor, SUSPENDED_OR_ENDED, Progress(f"{label} (start)", n))
        await suspended.start()
        async with LoadClient(stack.api_url, c) as client:
            try:

                async def start(_: int) -> LoadResponse:
                    return await client.post(
                        "/api/processes/three_steps_with_input", content=EMPTY_FORM, headers=JSON_HEADERS
                    )

                async def started(_: int, t0: float, response: LoadResponse) -> None:
                    suspended.add(uuid.UUID(response.json()["id"]), t0)

                start_errors = await drive(n, c, start, 201, started)
                await suspended.all_seen(self._deadline(n))
            finally:
                await suspended.stop()
            pids = [pid for pid, s in suspended.seen.items() if s.status == ProcessStatus.SUSPENDED.value]

            async def body() -> dict[str, Any]:
                watcher = Watcher(monitor, ENDED, Progress(label, len(pids)))
                await watcher.start()
                try:

                    async def resume(i: int) -> LoadResponse:
                        return await client.put(
                            f"/api/processes/{pids[i]}/resume", content=EMPTY_FORM, headers=JSON_HEADERS
                        )

                    async def resumed(i: int, t0: float, _: LoadResponse) -> None:
                        watcher.add(pids[i], t0)

                    t_first = time.perf_counter()
                    errors = start_errors + await drive(len(pids), c, resume, 204, resumed)
                    await watcher.all_seen(self._deadline(n))
                finally:
                    await watcher.stop()
                t_last = max((s.observed for s in watcher.seen.values()), default=t_first)
                rows = await monitor.fetch(
                    f"""{MARK} SELECT p.pid, p.last_modified_at - max(i.input_time) AS took
                          FROM processes p JOIN input_states i ON i.pid = p.pid AND i.input_type = 'user_input'
                         WHERE p.pid = ANY($1::uuid[]) GROUP BY p.pid, p.last_modified_at""",
                    list(watcher.seen),
                )
                row_latency = [r["took"].total_seconds() * 1000 for r in rows]
                return self._summary(n, c, watcher, errors, t_first, t_last, row_latency)

            return await self._measured(window, body)  # the window starts at the first resume

    async def _scenario_celery(self, stack: Stack, monitor: Monitor, n: int, window: Window | None) -> Any:
        """Rows written as orchestrator-core's API writes them (not measured), then `tasks.new_workflow` per
        process from a real Celery client: measured from the first message to the last completion."""
        pids = [uuid.uuid4() for _ in range(n)]
        await self._write_core_processes(monitor, pids, "three_steps")
        queue = self._queues()["CELERY_QUEUES"].split(",")[1]
        label = window.label if window else "warm-up"

        async def body() -> dict[str, Any]:
            watcher = Watcher(monitor, ENDED, Progress(label, n))
            await watcher.start()
            loop = asyncio.get_running_loop()
            t_first = time.perf_counter()
            try:
                sent = await asyncio.to_thread(self._celery_send, pids, queue, loop, watcher)
                await watcher.all_seen(self._deadline(n))
            finally:
                await watcher.stop()
            t_last = max((s.observed for s in watcher.seen.values()), default=t_first)
            # The rows were written before the clock started: latency is from each message's send instead.
            client = [(s.observed - watcher.sent[pid]) * 1000 for pid, s in watcher.seen.items()]
            result = self._summary(n, 0, watcher, [], t_first, t_last, client)
            result["send_s"] = round(sent, 3)
            result["workers"] = self.options.workers
            return result

        return await self._measured(window, body)

    async def _write_core_processes(self, monitor: Monitor, pids: list[uuid.UUID], workflow: str) -> None:
        """What orchestrator-core's `create_process` commits before it sends the Celery message: the process
        row (`created`) and its initial state."""
        states = [
            json.dumps(
                {"process_id": str(pid), "reporter": BENCH_USER, "workflow_name": workflow, "workflow_target": "SYSTEM"}
            )
            for pid in pids
        ]
        await monitor.fetch(
            f"""{MARK} WITH p AS (
                INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, assignee)
                SELECT pid, (SELECT workflow_id FROM workflows WHERE name = $3), 'created', $4, false, 'SYSTEM'
                  FROM unnest($1::uuid[]) AS pid
                RETURNING pid)
            INSERT INTO input_states (pid, input_state, input_type)
            SELECT x.pid, x.state::jsonb, 'initial_state' FROM unnest($1::uuid[], $2::text[]) AS x(pid, state)""",
            pids,
            states,
            workflow,
            BENCH_USER,
        )

    def _celery_send(
        self, pids: list[uuid.UUID], queue: str, loop: asyncio.AbstractEventLoop, watcher: Watcher
    ) -> float:
        """Publish with a real Celery 5 client, as orchestrator-core's `trigger_task.delay(pid, user)` does."""
        import kombu.pools
        from celery import Celery

        app = Celery(f"bench-{self.run_id}", broker=self.settings.CELERY_BROKER_URL or self.settings.BROKER_URL)
        app.conf.update(broker_connection_retry=False, task_default_queue=queue)
        t0 = time.perf_counter()
        try:
            for pid in pids:
                sent_at = time.perf_counter()
                app.send_task("tasks.new_workflow", args=[str(pid), BENCH_USER], queue=queue)
                loop.call_soon_threadsafe(watcher.add, pid, sent_at)
            return time.perf_counter() - t0
        finally:
            app.close()
            kombu.pools.reset()  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - informational only
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": commit,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    header = (
        f"{'scenario':<20} {'n':>5} {'C':>3} {'proc/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'client p50':>10} {'xact/proc':>9} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    resources = []
    for name, r in results["scenarios"].items():
        lat, client = r["latency_ms"], r["client_latency_ms"]
        lines.append(
            f"{name:<20} {r['n']:>5} {r['concurrency'] or '-':>3} {_fmt(r['throughput']):>8} "
            f"{_fmt(lat['p50'], 2):>7} {_fmt(lat['p95'], 2):>7} {_fmt(lat['p99'], 2):>7} "
            f"{_fmt(client['p50'], 2):>10} {_fmt(r['xacts_per_process'], 2):>9} {r['errors']:>6}"
        )
        servers = ", ".join(
            f"{k} {v['cpu_s']:.2f} s / {v['peak_rss_mb']:.0f} MB" for k, v in r.get("servers", {}).items()
        )
        resources.append(
            f"  {name:<20} CPU / peak RSS: {servers}; postgres {r.get('postgres_cpu_s', 0):.2f} s; "
            f"bench client {r.get('client_cpu_s', 0):.2f} s"
            + (f"; {r['statements_per_process']} SQL statements/process" if r.get("statements_per_process") else "")
        )
    for name, why in results.get("skipped", {}).items():
        lines.append(f"{name:<20} skipped: {why}")
    fanouts = [
        bench_fanout.format_fanout(name, r["fanout"]) for name, r in results["scenarios"].items() if "fanout" in r
    ]
    if fanouts:
        lines.extend(["", "parallel branches:", *fanouts])
    return "\n".join([*lines, "", "resources over the measured window:", *resources])


def format_comparison(current: dict[str, Any], saved: dict[str, Any]) -> str:
    lines = [f"{'scenario':<20} {'proc/s now/then':>16} {'p50 then/now':>13} {'peak RSS now/then':>18}"]

    def ratio(a: Any, b: Any) -> str:
        return f"x{a / b:.2f}" if isinstance(a, int | float) and isinstance(b, int | float) and b else "-"

    for name, now in current["scenarios"].items():
        then = saved.get("scenarios", {}).get(name)
        if then is None:
            lines.append(f"{name:<20} (not in the saved run)")
            continue
        rss_now = max((v["peak_rss_mb"] for v in now.get("servers", {}).values()), default=None)
        rss_then = max((v["peak_rss_mb"] for v in then.get("servers", {}).values()), default=None)
        lines.append(
            f"{name:<20} {ratio(now['throughput'], then['throughput']):>16} "
            f"{ratio(then['latency_ms']['p50'], now['latency_ms']['p50']):>13} {ratio(rss_now, rss_then):>18}"
        )
    return "\n".join(lines)


def format_profile(name: str, profile: dict[str, Any]) -> str:
    lines = [f"profile of {name}:"]
    for server, spy in profile.get("py-spy", {}).items():
        if not spy.get("samples"):
            lines.append(f"  {server}: no samples ({spy.get('error', 'idle')})")
            continue
        cats = ", ".join(f"{k} {v}%" for k, v in spy["categories"].items())
        lines.append(f"  {server} ({spy['samples']} samples at 100 Hz): {cats}")
        lines.extend(f"    {f['pct']:>5}%  {f['frame']}" for f in spy["top_self"][:10])
    if profile.get("sql"):
        lines.append("  SQL (pg_stat_statements, this scenario):")
        lines.extend(
            f"    {q['calls']:>7} calls {q['mean_ms']:>8.3f} ms mean {q['total_ms']:>9.1f} ms  {q['query'][:90]}"
            for q in profile["sql"]
        )
    return "\n".join(lines)


def pick_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["throughput"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        chosen["throughput_runs"] = [r["throughput"] for r in runs]
        chosen["p50_runs"] = [r["latency_ms"]["p50"] for r in runs]
        chosen["throughput_spread"] = round(statistics.pstdev(chosen["throughput_runs"]), 1)
    return chosen


# --------------------------------------------------------------------------------------------------- entry point


async def run_bench(options: Options) -> dict[str, Any]:
    bench = Bench(options)
    results: dict[str, Any] = {
        "version": 1,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "options": {
            "count": options.count,
            "concurrency": options.concurrency,
            "workers": options.workers,
            "quick": options.quick,
            "repeat": options.repeat,
        },
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "scenarios": {},
        "skipped": {},
    }
    # SIGTERM/SIGINT cancel the run; the `finally` below still stops the servers, drops the database, deletes
    # the queues (the servers run in their own sessions: a terminal's Ctrl-C reaches only the bench).
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await bench.open()
        assert bench.db is not None
        results["database"] = bench.db.description
        for name in options.scenarios:
            if LAYOUT[name] != "threadpool" and not bench.broker_ok:
                results["skipped"][name] = bench.broker_note
                continue
            runs = []
            for i in range(options.repeat):
                if options.repeat > 1:
                    note(f"{name}: run {i + 1}/{options.repeat}")
                try:
                    runs.append(await bench.run_scenario(name))
                except BenchError as exc:
                    bench.failed = True
                    note(f"{name}: failed: {exc}")
                    results["skipped"][name] = f"failed: {str(exc).splitlines()[0]}"
                    break
            if runs and name not in results["skipped"]:
                results["scenarios"][name] = pick_median(runs)
                if any(r["errors"] for r in runs):
                    bench.failed = True
    finally:
        await bench.close()
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["failed"] = bench.failed
    return results


def main(argv: list[str]) -> int:
    options = parse_options(argv)
    for name in ("httpx", "httpcore"):  # one INFO line per request would drown the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import uvloop

        results: dict[str, Any] = uvloop.run(run_bench(options))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        results = asyncio.run(run_bench(options))
    except BenchError as exc:
        note(f"orchestrator bench: {exc}")
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        note("orchestrator bench: interrupted; servers stopped, bench database dropped")
        return 130
    print(f"database: {results.get('database')}")
    print(
        f"machine: {results['machine']['cpus']} CPUs, {results['machine']['platform']}, Python "
        f"{results['machine']['python']}, commit {results['machine']['commit'] or '?'}; load average "
        f"{' '.join(map(str, results['loadavg_start']))} at start, {' '.join(map(str, results['loadavg_end']))} at end"
    )
    print(
        "latency: p50/p95/p99 from the row's started_at to its last_modified_at (resume: from the resume's input; "
        "celery: from the message's send); client p50: from the request's send to completion seen in the database"
    )
    print(format_table(results))
    for name, r in results["scenarios"].items():
        if r.get("profile"):
            print(format_profile(name, r["profile"]))
    if options.compare_path is not None:
        try:
            saved = json.loads(options.compare_path.read_text())
            print(f"compared with {options.compare_path}:")
            print(format_comparison(results, saved))
        except (OSError, ValueError) as exc:
            note(f"cannot compare with {options.compare_path}: {exc}")
    line = json.dumps(results, default=str, separators=(",", ":"))
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(results, default=str, indent=1) + "\n")
    print(line, flush=True)
    return 1 if results["failed"] else 0
