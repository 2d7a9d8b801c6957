"""Transport adapters (RabbitMQ, the Dramatiq and Celery wire formats); they know nothing of workflows."""

from brokers.dramatiq import declare_dramatiq_queues, encode_message, queue_declarations
from brokers.rabbitmq import (
    BrokerError,
    BrokerRejectedError,
    BrokerUnavailableError,
    Publisher,
    QueueDeclaration,
    declare_queues,
)

__all__ = [
    "BrokerError",
    "BrokerRejectedError",
    "BrokerUnavailableError",
    "Publisher",
    "QueueDeclaration",
    "declare_dramatiq_queues",
    "declare_queues",
    "encode_message",
    "queue_declarations",
]
