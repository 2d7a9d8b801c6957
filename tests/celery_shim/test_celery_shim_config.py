"""The shim's pure parts: argument shapes and the start-up refusal of queue layouts that collide with ours."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any
from uuid import uuid4

import pytest
from support.processes import REPO_DIR

from brokers.celery import CeleryTask, MessageRejected
from orchestrator.celery_shim import check_layout, process_call
from orchestrator.settings import load_settings

PID = uuid4()


def task(*args: Any, **kwargs: Any) -> CeleryTask:
    return CeleryTask(id="t1", name="tasks.new_workflow", args=list(args), kwargs=kwargs)


@pytest.mark.parametrize(
    "call",
    [
        task(str(PID), "user"),  # 4.3.0 and later
        task(str(PID), "tf_simple", "user"),  # 3.0.0: new_*(process_id, workflow_key, user)
        task(str(PID), "tf_simple", {"size": 1}, "user"),  # <= 2.x: new_*(pid, workflow_key, state, user)
        task(str(PID), [{"name": "x"}], "user"),  # <= 2.x: resume_*(pid, user_inputs, user)
        task(str(PID), None, "user"),  # <= 2.x resume without input
        task(process_id=str(PID), user="user"),  # keywords only
        task(process_id=str(PID), workflow_key="tf_simple", state={}, user="user"),
        task(str(PID), user="user"),  # mixed
    ],
)
def test_argument_shapes_of_every_release(call: CeleryTask) -> None:
    assert process_call(call) == (PID, "user")


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (task(), TypeError, "needs (process_id, ..., user)"),
        (task(str(PID)), TypeError, "needs (process_id, ..., user)"),
        (task(user="user"), TypeError, "needs (process_id, ..., user)"),
        (task(str(PID), 42), TypeError, "user must be a string"),
        (task("not-a-uuid", "user"), ValueError, "badly formed process id 'not-a-uuid'"),
        (task(str(PID), "user", process_id=str(PID)), TypeError, "multiple values for argument 'process_id'"),
    ],
)
def test_unusable_arguments_are_refused_for_good(call: CeleryTask, error: type[Exception], text: str) -> None:
    with pytest.raises(MessageRejected) as refused:
        process_call(call)
    assert isinstance(refused.value.__cause__, error)  # what the client's AsyncResult.get() raises
    assert text in refused.value.reason


def settings(**values: Any) -> Any:
    values.setdefault("BROKER_URL", "amqp://guest:guest@rabbit:5672/")
    return load_settings(**values)


def test_default_layouts_do_not_collide() -> None:
    check_layout(settings())  # new_tasks... on the Celery side, tasks/workflows on ours
    check_layout(settings(CELERY_QUEUES="tasks,workflows", TASKS_QUEUE="dq.tasks", WORKFLOWS_QUEUE="dq.workflows"))
    check_layout(settings(CELERY_QUEUES="tasks,workflows", CELERY_BROKER_URL="amqp://guest:guest@rabbit:5672/celery"))
    check_layout(settings(CELERY_QUEUES="tasks,workflows", CELERY_BROKER_URL="amqp://u:p@other:5672/"))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"CELERY_QUEUES": "tasks,workflows"}, "'tasks', 'workflows'"),
        # The same vhost spelled differently (credentials and the trailing slash do not matter).
        ({"CELERY_QUEUES": "workflows", "CELERY_BROKER_URL": "amqp://other:secret@rabbit/"}, "'workflows'"),
        ({"CELERY_QUEUES": "new_tasks,reconcile", "TARGET_QUEUES": {"RECONCILE": "reconcile"}}, "'reconcile'"),
        ({"CELERY_QUEUES": "workflows.DQ"}, "'workflows.DQ' (derived from Dramatiq queue 'workflows')"),
    ],
)
def test_collisions_are_refused_naming_the_queues_and_the_fix(values: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match="same broker/vhost") as refused:
        check_layout(settings(**values))
    assert named in str(refused.value)
    assert "CELERY_BROKER_URL" in str(refused.value)  # the fixes: another vhost for either side, or other names
    assert "BROKER_URL on another vhost, or other TASKS_QUEUE/WORKFLOWS_QUEUE/TARGET_QUEUES names" in str(refused.value)


def test_other_layout_errors() -> None:
    with pytest.raises(ValueError, match="CELERY_QUEUES is empty"):
        check_layout(settings(CELERY_QUEUES=""))
    with pytest.raises(ValueError, match="dead-letter queue"):
        check_layout(settings(CELERY_QUEUES="new_tasks,orchestrator.celery.dead"))
    with pytest.raises(ValueError, match="reserved by RabbitMQ"):
        check_layout(settings(CELERY_QUEUES="amq.tasks"))


def test_command_refuses_a_colliding_layout_with_one_line_and_status_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CELERY_", "TASKS_", "WORKFLOWS_"))}
    env.update(CELERY_QUEUES="tasks,workflows", BROKER_URL="amqp://guest:guest@127.0.0.1:1/")
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "celery-shim"],
        env=env,
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("orchestrator celery-shim: Celery queue name(s) 'tasks', 'workflows' are also used")
