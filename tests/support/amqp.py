"""RabbitMQ plumbing for tests: connections, the `amqp` channel fixture, and deleting what a test declared.

A pytest plugin (tests/conftest.py lists it in `pytest_plugins`), so the fixture is available everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from support.urls import BROKER_URL


@asynccontextmanager
async def amqp_connection(url: str = BROKER_URL) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def amqp_channel(url: str = BROKER_URL) -> AsyncIterator[AbstractChannel]:
    """A channel on a connection of its own, closed with it."""
    async with amqp_connection(url) as connection:
        yield await connection.channel()


@pytest.fixture
async def amqp() -> AsyncIterator[AbstractChannel]:
    """A plain channel on the test RabbitMQ, for publishing raw messages and inspecting queues."""
    async with amqp_channel() as channel:
        yield channel


def dramatiq_queues(*names: str) -> list[str]:
    """Each queue with the delay (`.DQ`) and dead-letter (`.XQ`) queues Dramatiq declares beside it."""
    return [name + suffix for name in names for suffix in ("", ".DQ", ".XQ")]


async def delete_queues(url: str, names: Iterable[str], exchanges: Iterable[str] = ()) -> None:
    """Delete queues (and exchanges) a test declared; deleting one that does not exist is no error."""
    async with amqp_channel(url) as channel:
        for name in names:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)
