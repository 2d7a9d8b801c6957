"""Where the time goes: py-spy on every server of a scenario, and the SQL the servers sent (pg_stat_statements)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from bench.console import note
from bench.database import MARK, Database, Monitor
from bench.processes import Server, wait_exit

PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("structlog", "/logging/")),
    ("asyncpg", ("asyncpg",)),
    ("http (uvicorn/starlette/h11)", ("uvicorn", "starlette", "h11", "httptools", "anyio/_backends")),
    ("http (orchestrator.http)", ("orchestrator/http",)),
    ("forms/pydantic", ("pydantic", "pydantic_forms", "orchestrator/dsl/forms")),
    ("json", ("orjson", "orchestrator/dsl/jsonutil")),
    ("broker (aio-pika/dramatiq/celery)", ("aio_pika", "aiormq", "pamqp", "dramatiq", "kombu", "brokers/")),
    (
        "engine",
        (
            "orchestrator/runtime/",
            "orchestrator/persistence/",
            "orchestrator/services",
            "orchestrator/dsl/state",
            "orchestrator/dsl/steps",
            "orchestrator/dsl/results",
            "orchestrator/worker/",
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
        out_dir.mkdir(parents=True, exist_ok=True)
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


async def open_profiler(out_dir: Path, db: Database, native: bool) -> Profiler:
    """A profiler with what this machine has: py-spy if installed, pg_stat_statements if the server loads it."""
    exe = _pyspy()
    if exe is None:
        note("note: py-spy not found (pip install py-spy); profiling the database only")
    statements = await _statements_available(db)
    if not statements:
        note("note: pg_stat_statements is not loaded on this server (shared_preload_libraries); no SQL profile")
    return Profiler(out_dir, exe, statements, native)


def _pyspy() -> str | None:
    """py-spy on PATH or next to this interpreter (a venv not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


async def _statements_available(db: Database) -> bool:
    """pg_stat_statements is loaded; in a database of the bench's own, its extension is created if missing."""
    monitor = await Monitor.open(db.dsn)
    try:
        try:
            await monitor.fetch(f"{MARK} SELECT 1 FROM pg_stat_statements LIMIT 1")
            return True
        except asyncpg.UndefinedTableError:
            if not db.dedicated:
                return False
        try:
            await monitor.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await monitor.fetch(f"{MARK} SELECT 1 FROM pg_stat_statements LIMIT 1")
            return True
        except asyncpg.PostgresError:
            return False
    finally:
        await monitor.close()
