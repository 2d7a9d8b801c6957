"""A real Celery client app whose blocking calls run on ONE dedicated thread (shared by the Celery test helpers).

The rpc reply queue belongs to the thread that sends and `get()`s, so both happen on that thread, and the
thread-local result consumer is closed there too (otherwise its socket leaks into a ResourceWarning).
"""

from __future__ import annotations

import asyncio
import functools
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
