"""Where the shared test servers are (override with environment variables), and unique names for what tests create
on them: PostgreSQL and RabbitMQ are shared with other engineers' test runs, so nothing may collide."""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote, urlsplit

ADMIN_URI = os.environ.get("TEST_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
CELERY_TEST_BROKER_URL = os.environ.get("CELERY_TEST_BROKER_URL", BROKER_URL)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def database_url(name: str) -> str:
    """ADMIN_URI, on database `name`."""
    return f"{ADMIN_URI.rpartition('/')[0]}/{name}"


def vhost_url(vhost: str) -> str:
    """BROKER_URL, on virtual host `vhost`."""
    return urlsplit(BROKER_URL)._replace(path="/" + quote(vhost, safe="")).geturl()
