"""The report: the table, the profiles, the comparison with a saved run, and the results as JSON."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from bench.console import note
from bench.fanout import format_fanout


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
    fanouts = [format_fanout(name, r["fanout"]) for name, r in results["scenarios"].items() if "fanout" in r]
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


def print_report(results: dict[str, Any], compare_path: Path | None, json_path: Path | None) -> None:
    """The human report on stdout, then the results as one JSON line (the last line: for scripts), saved too."""
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
    if compare_path is not None:
        try:
            saved = json.loads(compare_path.read_text())
            print(f"compared with {compare_path}:")
            print(format_comparison(results, saved))
        except (OSError, ValueError) as exc:
            note(f"cannot compare with {compare_path}: {exc}")
    line = json.dumps(results, default=str, separators=(",", ":"))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, default=str, indent=1) + "\n")
    print(line, flush=True)
