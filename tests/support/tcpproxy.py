"""A TCP proxy in front of RabbitMQ or PostgreSQL, for outage tests (asyncpg-style adversity without touching the
shared servers).

A pytest plugin (tests/conftest.py lists it in `pytest_plugins`): the `proxy` fixture is a started one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from support.urls import BROKER_URL


class TcpProxy:
    """127.0.0.1:<port> → the server of `target` (RabbitMQ by default). `cut()` drops every connection and refuses
    new ones; `refuse_new()` only refuses new ones (a server at its connection limit, or shutting down);
    `reopen()` listens again on the same port (an outage as clients see it, without touching the shared server)."""

    def __init__(self, target: str = BROKER_URL) -> None:
        self.target = urlsplit(target)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """`target` with the proxy's address: same credentials, path and query."""
        userinfo = self.target.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return self.target._replace(netloc=netloc).geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def reopen(self) -> None:
        await self.start()

    async def refuse_new(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def cut(self) -> None:
        await self.refuse_new()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target.hostname, self.target.port or 5672)
        except OSError:
            writer.transport.abort()
            self._tasks.discard(task)
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy()
    await p.start()
    yield p
    await p.close()
