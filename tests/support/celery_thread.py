"""Real Celery client apps whose blocking calls run on ONE dedicated thread (the broker tests' `CeleryClient`, and
the base of the Celery shim tests' orchestrator-core client).

The rpc reply queue belongs to the thread that sends and `get()`s, so both happen on that thread, and the
thread-local result consumer is closed there too (otherwise its socket leaks into a ResourceWarning).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kombu.pools

T = TypeVar("T")


class CeleryOnOneThread:
    def __init__(self, app: Any, thread_name: str) -> None:
        self.app = app
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        def close() -> None:
            backend = self.app._local.__dict__.get("backend")
            consumer = getattr(backend, "result_consumer", None)
            if consumer is not None and consumer._consumer is not None:
                consumer.stop()
            self.app.close()
            # kombu keeps producer/connection pools process-wide, keyed by broker URL: close them all.
            kombu.pools.reset()  # type: ignore[no-untyped-call]

        try:
            await self.run(close)
        finally:
            self._executor.shutdown(wait=True)


class CeleryClient(CeleryOnOneThread):
    """A real Celery 5.7 client (rpc:// results) whose blocking calls run on ONE dedicated thread."""

    def __init__(self, url: str, *, protocol: int = 2) -> None:
        from celery import Celery  # tests only: the product never imports celery

        super().__init__(
            Celery(f"client-{uuid.uuid4().hex[:8]}", broker=url, backend="rpc://", set_as_current=False),
            "celery-client",
        )
        self.app.conf.update(task_protocol=protocol, result_expires=60, broker_connection_retry=False)

    async def send(self, name: str, *args: Any, **options: Any) -> str:
        """`send_task` without waiting for the result; returns the task id."""
        result = await self.run(self.app.send_task, name, args=args, **options)
        return str(result.id)

    async def call(self, name: str, *args: Any, timeout: float = 10.0, **options: Any) -> Any:
        """`send_task(...).get(timeout)` in the client thread: returns the result or raises what `get()` raises."""

        def call() -> Any:
            return self.app.send_task(name, args=args, **options).get(timeout=timeout)

        return await self.run(call)
