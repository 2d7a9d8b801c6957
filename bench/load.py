"""The load: a lean HTTP/1.1 keep-alive client and the driver that keeps C requests in flight."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

EMPTY_FORM = b"[{}]"
JSON_HEADERS = {"content-type": "application/json"}


class LoadError(Exception):
    """A load request failed at the transport level (connection refused, reset, malformed reply)."""


@dataclass
class LoadResponse:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class LoadClient:
    """A lean HTTP/1.1 keep-alive client for the load (what wrk is to curl): it costs the shared 2 cores a fraction
    of httpx's CPU per request, so the measurement is of the servers, not of the client. One connection per lane;
    it speaks only what the bench sends (small JSON bodies, Content-Length replies)."""

    def __init__(self, base_url: str, concurrency: int, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._all: list[asyncio.StreamWriter] = []
        self._concurrency = concurrency

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        for writer in self._all:
            writer.close()

    async def post(self, path: str, *, content: bytes, headers: Mapping[str, str] | None = None) -> LoadResponse:
        return await self.request("POST", path, content)

    async def put(self, path: str, *, content: bytes, headers: Mapping[str, str] | None = None) -> LoadResponse:
        return await self.request("PUT", path, content)

    async def request(self, method: str, path: str, body: bytes) -> LoadResponse:
        """One request; a keep-alive connection the server closed while idle (uvicorn: after 5 s) is retried once on
        a new one."""
        try:
            async with asyncio.timeout(self.timeout):
                for attempt in (1, 2):
                    reused = attempt == 1 and (not self._idle.empty() or len(self._all) >= self._concurrency)
                    connection = await self._connection(fresh=attempt == 2)
                    try:
                        return await self._exchange(connection, method, path, body)
                    except (OSError, asyncio.IncompleteReadError) as exc:
                        if not reused or attempt == 2:
                            raise LoadError(f"{type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise LoadError(f"no answer within {self.timeout} s") from None
        raise AssertionError("unreachable")

    async def _connection(self, fresh: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An idle keep-alive connection, else a new one; `fresh` (the retry after a connection the server closed
        while idle, when the other idle ones may be closed too): always a new one."""
        if fresh or (self._idle.empty() and len(self._all) < self._concurrency):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
            return reader, writer
        return await self._idle.get()

    async def _exchange(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], method: str, path: str, body: bytes
    ) -> LoadResponse:
        reader, writer = connection
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            status_line, _, headers = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length, close = 0, False
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            content = await reader.readexactly(length) if length else b""
            status = int(status_line.split()[1])
        except BaseException:
            self._discard(writer)
            raise
        if close:
            self._discard(writer)
        else:
            self._idle.put_nowait(connection)
        return LoadResponse(status, content)

    def _discard(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        if writer in self._all:
            self._all.remove(writer)


async def drive(
    n: int,
    concurrency: int,
    send: Callable[[int], Awaitable[LoadResponse]],
    expect: int,
    on_ok: Callable[[int, float, LoadResponse], Awaitable[None]],
) -> list[str]:
    """Send `n` requests with at most `concurrency` in flight; return the errors (status or transport)."""
    errors: list[str] = []
    indexes = iter(range(n))

    async def lane() -> None:
        for i in indexes:  # one iterator shared by the lanes: each index is sent once
            t0 = time.perf_counter()
            try:
                response = await send(i)
            except LoadError as exc:
                errors.append(str(exc))
                continue
            if response.status_code != expect:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            await on_ok(i, t0, response)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, max(n, 1)))))
    return errors
