"""Fixtures shared by the broker tests (the RabbitMQ on 127.0.0.1 is shared with other engineers' test runs).

Celery fixtures are prefixed `celery_`: every test works on uuid-suffixed queues that are deleted afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import aio_pika
import pytest
from support.amqp import amqp_channel, delete_queues
from support.celery_thread import CeleryClient
from support.urls import CELERY_TEST_BROKER_URL


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
    async with amqp_channel(CELERY_TEST_BROKER_URL) as channel:
        yield channel


@pytest.fixture
async def celery_cleanup() -> AsyncIterator[Callable[..., None]]:
    """`celery_cleanup(*queues, exchanges=[...])` registers RabbitMQ objects to delete after the test."""
    queues: list[str] = []
    exchange_names: list[str] = []

    def register(*names: str, exchanges: Iterable[str] = ()) -> None:
        queues.extend(names)
        exchange_names.extend(exchanges)

    yield register
    await delete_queues(CELERY_TEST_BROKER_URL, dict.fromkeys(queues), exchanges=dict.fromkeys(exchange_names))
