"""What each server costs over the measured window: CPU seconds and peak resident memory of its process tree,
plus the PostgreSQL backends serving it and the bench client itself."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import psutil

from bench.processes import Server


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
