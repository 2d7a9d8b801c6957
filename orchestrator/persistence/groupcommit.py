"""Group commit: the requests concurrent runs make while a statement is in flight go together in the next one.

Batching adds no delay: a lone request is written at once (a batch of one), by its caller's own task when nothing
is in flight (no task hop before it is sent); only requests that arrive while the connection is busy wait for the
next batch. Each caller waits for its own result, i.e. for its own commit. If a
batch fails as a whole, its requests are written one by one, so that one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write_many: Callable[[list[T]], Awaitable[list[R]]],
        *,
        on_alone_failing: Callable[[Exception], Exception] = lambda exc: exc,
        max_batch: int = 256,
        max_in_flight: int = 2,
    ) -> None:
        """`write_many` writes a batch in one statement and returns one result per request, in order;
        `on_alone_failing` may translate the error of a request that fails on its own."""
        self.write_many = write_many
        self.on_alone_failing = on_alone_failing
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if self._in_flight == 0 and not self._pending:
            # Nothing in flight: the caller writes it. Cancelling the caller then cancels its write (its outcome
            # is unknown, as after a crash); requests arriving meanwhile go to a drainer, as below.
            self._in_flight += 1
            try:
                await self._write([(request, future)])
            finally:
                self._in_flight -= 1
                if self._pending:
                    self._start_drainer()
            return future.result()
        self._pending.append((request, future))
        if self._in_flight < self.max_in_flight:
            self._start_drainer()
        return await future

    def _start_drainer(self) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                await self._write(batch)
        finally:
            self._in_flight -= 1

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.write_many([request for request, _ in batch])
        except Exception as exc:
            if len(batch) > 1:  # find the bad one: write each alone
                for item in batch:
                    await self._write([item])
                return
            _settle(batch[0][1], self.on_alone_failing(exc))
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():  # the waiting caller was cancelled; its request is written all the same
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def columns(rows: Sequence[tuple[object, ...]]) -> list[list[object]]:
    """Rows as one list per column: the array parameters of a statement that unnests a batch in one round trip."""
    return [list(column) for column in zip(*rows, strict=True)]
