"""Fixtures shared by the broker tests (the RabbitMQ on 127.0.0.1 is shared with other engineers' test runs).

Celery fixtures are prefixed `celery_`: every test works on uuid-suffixed queues that are deleted afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import aio_pika
import pytest
from celery_support import CELERY_TEST_BROKER_URL, CeleryClient


@pytest.fixture
async def celery_client() -> AsyncIterator[Callable[..., CeleryClient]]:
    """Factory: `celery_client(protocol=1)`; every client is closed after the test."""
    clients: list[CeleryClient] = []

    def make(*, protocol: int = 2) -> CeleryClient:
        client = CeleryClient(CELERY_TEST_BROKER_URL, protocol=protocol)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def celery_channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain channel for publishing raw messages and inspecting queues."""
    connection = await aio_pika.connect(CELERY_TEST_BROKER_URL)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
async def celery_cleanup() -> AsyncIterator[Callable[..., None]]:
    """`celery_cleanup(*queues, exchanges=[...])` registers RabbitMQ objects to delete after the test."""
    queues: list[str] = []
    exchange_names: list[str] = []

    def register(*names: str, exchanges: Iterable[str] = ()) -> None:
        queues.extend(names)
        exchange_names.extend(exchanges)

    yield register
    connection = await aio_pika.connect(CELERY_TEST_BROKER_URL)
    try:
        channel = await connection.channel()
        for name in dict.fromkeys(queues):
            await channel.queue_delete(name)
        for name in dict.fromkeys(exchange_names):
            await channel.exchange_delete(name)
    finally:
        await connection.close()
