"""The servers of a scenario as real subprocesses: the API (`orchestrator serve`), Dramatiq workers and the
Celery shim, each in its own session, on queues named for this run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.console import BenchError, note
from bench.database import MARK, connect

WORKFLOWS_MODULE = "orchestrator.examples.workflows"


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


async def wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            return
        await asyncio.sleep(0.05)


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


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> Server:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name, popen, log_path)


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


@dataclass
class Stack:
    """The servers of one scenario and how to reach them."""

    servers: list[Server] = field(default_factory=list)
    api_url: str | None = None


class Launcher:
    """Starts and stops the servers of each scenario against the bench database, and removes the run's queues.

    Counts the statements its readiness checks run on the bench database (subtracted from its transactions)."""

    def __init__(
        self,
        settings: Any,
        dsn: str,
        run_id: str,
        workers: int,
        log_dir: Path,
        workflows: str = WORKFLOWS_MODULE,
        threads: int = 8,
    ) -> None:
        """`threads`: each Dramatiq worker's `-t`, its run slots."""
        self.settings, self.dsn, self.run_id, self.workers, self.log_dir = settings, dsn, run_id, workers, log_dir
        self.workflows = workflows
        self.threads = threads
        self.prefix = f"bench_{run_id}"
        self.live: list[Server] = []
        self.own_statements = 0

    def queues(self) -> dict[str, str]:
        p = self.prefix
        return {
            "WORKFLOWS_QUEUE": f"{p}_workflows",
            "TASKS_QUEUE": f"{p}_tasks",
            "CELERY_QUEUES": f"{p}_new_tasks,{p}_new_workflows,{p}_resume_tasks,{p}_resume_workflows",
        }

    @property
    def celery_queue(self) -> str:
        """The queue the Celery shim consumes `tasks.new_workflow` from."""
        return self.queues()["CELERY_QUEUES"].split(",")[1]

    def _env(self, executor: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update(
            DATABASE_URI=self.dsn,
            WORKFLOW_MODULES=self.workflows,
            EXECUTOR=executor,
            MIGRATE_ON_START="false",
            **self.queues(),
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
            q = self.queues()
            for i in range(self.workers):
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
                            str(self.threads),
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

    def respawn(self, server: Server, executor: str = "dramatiq") -> Server:
        """The same command again (after a kill), under the same name."""
        if server in self.live:
            self.live.remove(server)
        return self._spawn(server.name, list(server.popen.args), executor)  # type: ignore[arg-type]

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
                shim_ready = layout != "celery" or await self._consumed(self.celery_queue)
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
        pids = [p.pid for s in workers for p in s.tree()]
        conn = await connect(self.dsn)
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

    def kill_all(self) -> None:
        for server in self.live:
            server.kill()
        self.live = []

    async def delete_queues(self) -> None:
        """Remove the uniquely named queues this run declared (Dramatiq's delay and dead-letter ones too)."""
        import aio_pika

        q = self.queues()
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
