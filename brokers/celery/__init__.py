"""Celery wire compatibility on RabbitMQ: decode Celery task messages, answer like the rpc:// backend.

Transport and protocol only; what a task means is the caller's business (the handler).
"""

from brokers.celery.consumer import CeleryConsumer, Handler
from brokers.celery.protocol import (
    READY_STATES,
    CeleryTask,
    MessageRejected,
    decode_task,
    encode_result,
    exception_result,
    failure_result,
    not_registered_result,
    revoked_result,
    success_result,
)
from brokers.celery.topology import (
    DEFAULT_DEAD_LETTER_QUEUE,
    QueueCollisionError,
    check_queue_collisions,
    declare_celery_queue,
    declare_celery_queues,
    declare_dead_letter_queue,
    same_vhost,
    validate_queue_name,
)

__all__ = [
    "DEFAULT_DEAD_LETTER_QUEUE",
    "READY_STATES",
    "CeleryConsumer",
    "CeleryTask",
    "Handler",
    "MessageRejected",
    "QueueCollisionError",
    "check_queue_collisions",
    "declare_celery_queue",
    "declare_celery_queues",
    "declare_dead_letter_queue",
    "decode_task",
    "encode_result",
    "exception_result",
    "failure_result",
    "not_registered_result",
    "revoked_result",
    "same_vhost",
    "success_result",
    "validate_queue_name",
]
