"""Helpers for the Celery broker tests: a real Celery 5.7 client on its own thread, polling, unique names."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from celery_thread import CeleryOnOneThread

T = TypeVar("T")

CELERY_TEST_BROKER_URL = os.environ.get("CELERY_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unique(prefix: str = "t_celery") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def wait_for(predicate: Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; the last value otherwise (the assertion then fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


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
