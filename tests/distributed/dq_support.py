"""Helpers for the distributed-mode tests: the real RabbitMQ, a real PostgreSQL database per test, real
`dramatiq orchestrator.actors ...` worker subprocesses, and an in-process API (`Orchestrator`, EXECUTOR=dramatiq).

RabbitMQ is shared with other engineers' test runs: every test uses its own `t_<hex>`/`w_<hex>` queues (through
TASKS_QUEUE/WORKFLOWS_QUEUE), deleted with their `.DQ`/`.XQ` afterwards. Broker outages are simulated with a TCP
proxy in front of RabbitMQ (`support.tcpproxy`), never by stopping it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
from support.urls import unique
from support.waiting import wait_until

from orchestrator.runtime.orchestrator import Orchestrator

# Short timings so that take-overs happen within seconds; the defaults are exercised by test_sigkill_default_timings.
FAST = {"LEASE_TTL_SECONDS": "3", "SWEEP_INTERVAL_SECONDS": "0.5", "SHUTDOWN_TIMEOUT_SECONDS": "10"}


@dataclass
class Queues:
    tasks: str
    workflows: str
    extra: list[str] = field(default_factory=list)

    def new(self, prefix: str) -> str:
        name = unique(prefix)
        self.extra.append(name)
        return name

    def all(self) -> list[str]:
        return [self.tasks, self.workflows, *self.extra]


class Worker:
    """One `dramatiq orchestrator.actors ...` command (a master and its worker processes)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, text=True
            )

    def children(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    async def wait_ready(self, orch: Orchestrator, processes: int = 1, timeout: float = 20.0) -> list[str]:
        """Wait until every worker process heartbeats; return their runner ids (lease owners)."""
        found: list[str] = []

        async def ready() -> bool:
            nonlocal found
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            pids = self.children()
            rows = await orch.store.pool.fetch(
                "SELECT worker_id FROM workers WHERE os_pid = ANY($1::int[]) AND heartbeat_at > now() - interval '5 s'",
                pids,
            )
            found = [r["worker_id"] for r in rows]
            return len(found) == processes

        await wait_until(ready, timeout, f"{self.args} to be ready")
        return found

    def kill(self) -> None:
        """SIGKILL the master and its worker processes at once (a lost node)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log records of the worker processes (optionally only those with event `name`).

        Dramatiq pipes every worker process's output through its master, one write at a time, so two processes'
        lines can be glued together: records are found by decoding objects wherever they start."""
        text, found, position = self.log.read_text(errors="replace"), [], 0
        decoder = json.JSONDecoder()
        while (start := text.find("{", position)) != -1:
            try:
                record, position = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                position = start + 1
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                found.append(record)
        return found


async def assert_each_step_once(orch: Orchestrator, pids: list[UUID]) -> None:
    """Every process completed, each step of its workflow logged exactly once, in order (an input step also has
    the `suspend` row it waited on, as in orchestrator-core)."""
    rows = await orch.store.pool.fetch(
        """SELECT p.pid, p.last_status, w.name AS workflow,
                  array_agg(s.name ORDER BY s.completed_at, s.seq) FILTER (WHERE s.status <> 'suspend') AS steps
             FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
             LEFT JOIN process_steps s ON s.pid = p.pid
            WHERE p.pid = ANY($1::uuid[]) GROUP BY p.pid, p.last_status, w.name""",
        pids,
    )
    assert len(rows) == len(set(pids))
    for row in rows:
        expected = [step.name for step in orch.registry[row["workflow"]].steps]
        assert row["last_status"] == "completed", dict(row)
        assert list(row["steps"]) == expected, (row["pid"], list(row["steps"]), Counter(row["steps"]))


async def statuses(orch: Orchestrator, pids: list[UUID]) -> Counter[str]:
    rows = await orch.store.pool.fetch("SELECT last_status FROM processes WHERE pid = ANY($1::uuid[])", pids)
    return Counter(r["last_status"] for r in rows)
