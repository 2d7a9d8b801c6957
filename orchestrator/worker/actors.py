"""The Dramatiq worker entry point: `dramatiq orchestrator.actors -Q workflows` (or `-Q tasks`, `-p`/`-t` too).

Importing this module reads the settings and imports WORKFLOW_MODULES (a bad value or a missing module: one line
on stderr naming it, exit status 2), configures a `RabbitmqBroker` on BROKER_URL and declares orchestrator-core's
four actors, `new_task`, `new_workflow`, `resume_task` and `resume_workflow`, each `(process_id, user)`: the task
actors on TASKS_QUEUE, the workflow actors on WORKFLOWS_QUEUE. Every TARGET_QUEUES queue is declared too, so that
`-Q reconcile` consumes it (Dramatiq finds the actor by name whatever the queue).

Each worker process opens one `WorkerRuntime` (pool, engine, runner, sweeper, outbox relay) on its AsyncIO event
loop at boot, drains it at SIGTERM and closes it at shutdown (`WorkerLifecycle`). The actors only hand deliveries
to it; see `orchestrator.runtime.dramatiq_executor` for the ack strategy.

Retries are off (`max_retries=0`): an actor returns once the process is claimed, so a failure after that point
is not the message's to retry (the lease expires and a sweeper re-dispatches), and a delivery that could not
claim is either stale or picked up again by the sweeper. A blind Dramatiq retry could only add duplicates.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import AsyncIO, Middleware, Retries, default_middleware

from orchestrator import log
from orchestrator.dsl.workflow import import_workflow_modules
from orchestrator.exceptions import InvalidWorkflowError, SettingsError
from orchestrator.runtime.runner import RunKind
from orchestrator.settings import AppSettings, load_settings
from orchestrator.worker.runtime import WorkerRuntime

logger = structlog.get_logger(__name__)

EXIT_GRACE_SECONDS = 2.0
"""After shutdown, how long Dramatiq may take to close its connections before a process kept alive only by an
abandoned sync step exits anyway."""

ACTOR_TIME_LIMIT_MS = 15 * 60 * 1000
"""Above the longest a delivery may take (DELIVERY_WAIT_SECONDS plus a claim); runs are not bound by it."""


def _fail(message: str) -> None:
    print(f"orchestrator.actors: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _settings() -> AppSettings:
    try:
        loaded = load_settings(EXECUTOR="dramatiq")
        # Now, not at the first delivery: a missing workflow module is a configuration error, not an outage.
        import_workflow_modules(loaded.WORKFLOW_MODULES)
    except (SettingsError, InvalidWorkflowError) as exc:
        _fail(str(exc))
        raise  # unreachable
    return loaded


settings = _settings()
log.configure(settings.LOG_FORMAT, settings.LOG_LEVEL)

_runtime: WorkerRuntime | None = None


class WorkerLifecycle(Middleware):
    """Opens the worker process's runtime at boot, drains it at SIGTERM, closes it at shutdown.

    Listed after `AsyncIO`, so its event loop runs at `before_worker_boot` and still runs at
    `after_worker_shutdown` (Dramatiq calls `after_*` hooks in reverse order).
    """

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _runtime
        declared = sorted(broker.get_declared_queues())
        wanted = sorted(worker.consumer_whitelist or declared)
        if unknown := [q for q in wanted if q not in declared]:
            logger.warning(
                "no actor is declared on these queues; check TASKS_QUEUE, WORKFLOWS_QUEUE and TARGET_QUEUES",
                queues=unknown,
            )
        queues = [q for q in wanted if q in declared]
        _runtime = _loop().run_coroutine(_start_runtime(queues, worker.worker_threads))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Take no more messages: what is prefetched is requeued when Dramatiq closes its consumers.
        for thread in worker.workers:
            thread.pause()
        if _runtime is not None:
            _loop().run_coroutine(_runtime.drain(settings.SHUTDOWN_TIMEOUT_SECONDS))

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if _runtime is not None and _loop().run_coroutine(_runtime.close()):
            # A sync step that outlived the drain runs in a (non-daemon) thread that would keep this process alive
            # until it returns, for nothing: its outcome can no longer be committed. Let Dramatiq finish its own
            # shutdown, then exit without waiting for that thread.
            timer = threading.Timer(EXIT_GRACE_SECONDS, _exit_now)
            timer.daemon = True
            timer.start()


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _start_runtime(queues: list[str], threads: int) -> WorkerRuntime:
    """Built and started on the event loop, so that its asyncio primitives and tasks belong to it."""
    runtime = WorkerRuntime(settings, queues=queues, threads=threads)
    runtime.start()
    return runtime


def _loop() -> Any:
    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("the AsyncIO middleware must come before WorkerLifecycle")
    return thread


def _make_broker() -> RabbitmqBroker:
    middleware = [m() for m in default_middleware if m is not Retries]
    middleware += [Retries(max_retries=0), AsyncIO(), WorkerLifecycle()]
    try:
        return RabbitmqBroker(url=settings.BROKER_URL, middleware=middleware)
    except Exception as exc:  # pika parses the URL here
        _fail(f"invalid setting BROKER_URL: {exc}")
        raise  # unreachable


broker = _make_broker()
dramatiq.set_broker(broker)


async def _deliver(kind: RunKind, process_id: str, user: str | None) -> None:
    if _runtime is None:
        raise RuntimeError("no worker runtime: run the actors under `dramatiq orchestrator.actors`")
    await _runtime.deliver(kind, process_id, user)


_options: dict[str, Any] = {"max_retries": 0, "time_limit": ACTOR_TIME_LIMIT_MS}


@dramatiq.actor(actor_name="new_task", queue_name=settings.TASKS_QUEUE, **_options)
async def new_task(process_id: str, user: str | None = None) -> None:
    await _deliver("new", process_id, user)


@dramatiq.actor(actor_name="new_workflow", queue_name=settings.WORKFLOWS_QUEUE, **_options)
async def new_workflow(process_id: str, user: str | None = None) -> None:
    await _deliver("new", process_id, user)


@dramatiq.actor(actor_name="resume_task", queue_name=settings.TASKS_QUEUE, **_options)
async def resume_task(process_id: str, user: str | None = None) -> None:
    await _deliver("resume", process_id, user)


@dramatiq.actor(actor_name="resume_workflow", queue_name=settings.WORKFLOWS_QUEUE, **_options)
async def resume_workflow(process_id: str, user: str | None = None) -> None:
    await _deliver("resume", process_id, user)


@dramatiq.actor(actor_name="run_branch", queue_name=settings.WORKFLOWS_QUEUE, **_options)
async def run_branch(process_id: str, branch: str | list[str]) -> None:
    """A batch of branches of a fork in flight, or one (distributed branches; sent to the process's queue, found by
    name)."""
    if _runtime is None:
        raise RuntimeError("no worker runtime: run the actors under `dramatiq orchestrator.actors`")
    await _runtime.deliver_branch(process_id, branch)


for _queue in settings.TARGET_QUEUES.values():
    broker.declare_queue(_queue)
