"""Celery wire protocol: decoding every captured Celery 5.7 task message, encoding rpc:// replies, topology checks."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest

from brokers.celery import (
    CeleryTask,
    MessageRejected,
    QueueCollisionError,
    check_queue_collisions,
    decode_task,
    encode_result,
    exception_result,
    failure_result,
    not_registered_result,
    revoked_result,
    same_vhost,
    success_result,
    validate_queue_name,
)
from brokers.celery.topology import declare_dead_letter_queue

VECTORS = Path(os.environ.get("WIRE_VECTORS_DIR", "/work/shared/wire-vectors"))
TASK_VECTORS = sorted(VECTORS.glob("celery_p[12]_*.json"))
DRAMATIQ_VECTORS = sorted(VECTORS.glob("dramatiq_*.json"))
REPLY_VECTORS = sorted(p for p in VECTORS.glob("celery_rpc_reply_*.json"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return data


def decode_vector(vector: dict[str, Any]) -> CeleryTask:
    props = vector["properties"]
    return decode_task(
        base64.b64decode(vector["body_b64"]),
        content_type=props["content_type"],
        content_encoding=props["content_encoding"],
        headers=vector["headers"],
        reply_to=props["reply_to"],
        correlation_id=props["correlation_id"],
    )


def p2(body: Any, **headers: Any) -> CeleryTask:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_task(
        raw,
        content_type="application/json",
        content_encoding="utf-8",
        headers={"task": "tasks.new_task", "id": "tid", **headers},
    )


PID = "11110000-0000-4000-8000-000000000001"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_vectors_present() -> None:
    assert len(TASK_VECTORS) >= 30
    assert len(DRAMATIQ_VECTORS) >= 8
    assert len(REPLY_VECTORS) >= 9


# --- decoding: every captured task message ----------------------------------------------------------------------


@pytest.mark.parametrize("path", TASK_VECTORS, ids=lambda p: p.stem)
def test_every_celery_vector_decodes(path: Path) -> None:
    vector = json.loads(path.read_text())
    task = decode_vector(vector)
    body = vector["body_json"]
    protocol = 1 if vector["case"].startswith("celery_p1_") else 2
    assert task.protocol == protocol
    assert task.id == vector["task_id_returned_by_client"] == vector["properties"]["correlation_id"]
    if protocol == 2:
        args, kwargs, embed = body
        assert task.name == vector["headers"]["task"]
        assert dict(task.embed) == embed
    else:
        args, kwargs = body["args"], body["kwargs"]
        assert task.name == body["task"]
        assert vector["headers"] == {}
    assert task.name in {"tasks.new_task", "tasks.new_workflow", "tasks.resume_task", "tasks.resume_workflow"}
    if "default_json" not in vector["case"]:  # no envelopes: decoding is the identity
        assert task.args == args
        assert task.kwargs == kwargs
    assert task.retries == 0
    assert task.reply_to == vector["properties"]["reply_to"]
    assert task.correlation_id == task.id
    assert task.reply_correlation_id == task.id
    for moment in (task.eta, task.expires):
        assert moment is None or moment.tzinfo is not None


@pytest.mark.parametrize(
    "case",
    [
        "celery_p2_2q_send_task_new_task",
        "celery_p2_2q_send_task_new_workflow",
        "celery_p2_2q_send_task_resume_task",
        "celery_p2_2q_send_task_resume_workflow",
        "celery_p2_4q_send_task_new_task",
        "celery_p2_4q_send_task_new_workflow",
        "celery_p2_4q_send_task_resume_task",
        "celery_p2_4q_send_task_resume_workflow",
        "celery_p1_2q_send_task_new_task",
        "celery_p1_2q_send_task_resume_workflow",
    ],
)
def test_send_task_positional_pid_user(case: str) -> None:
    task = decode_vector(load(case))
    assert task.args[1] == "user"
    assert task.args[0].startswith("11110000-0000-4000-8000-00000000000")
    assert task.kwargs == {}
    assert (task.eta, task.expires) == (None, None)
    assert task.wants_reply
    assert not task.ignore_result


@pytest.mark.parametrize(
    "case",
    [
        "celery_p2_2q_orchestrator_style_new_task",
        "celery_p2_2q_orchestrator_style_resume_workflow",
        "celery_p2_4q_orchestrator_style_new_workflow",
        "celery_p2_4q_orchestrator_style_resume_task",
        "celery_p2_target_queue_override_reconcile",
    ],
)
def test_orchestrator_style_ignores_result(case: str) -> None:
    task = decode_vector(load(case))
    assert task.ignore_result is True
    assert task.reply_to is not None  # always set by Celery ...
    assert not task.wants_reply  # ... but nobody listens


def test_orchestrator_style_protocol_1() -> None:
    task = decode_vector(load("celery_p1_4q_orchestrator_style_new_workflow"))
    assert (task.protocol, task.name, task.args) == (1, "tasks.new_workflow", [PID, "user"])


def test_default_json_unwraps_kombu_envelopes() -> None:
    task = decode_vector(load("celery_p2_2q_default_json_uuid_object"))
    assert task.args == [PID, "user"]  # uuid {"hex": ...} -> the canonical uuid string
    assert task.kwargs == {"when": datetime(2026, 11, 21, 4, 40, 39, 123456, tzinfo=UTC), "amount": "1.50"}


def test_orchestrator_json_values_are_plain_strings() -> None:
    task = decode_vector(load("celery_p2_2q_custom_serializer_orchestrator_json"))
    assert task.args == [PID, "user"]
    assert task.kwargs == {"when": "2026-11-21T04:40:39+00:00", "amount": "1.50"}


def test_kwargs_only() -> None:
    task = decode_vector(load("celery_p2_2q_apply_async_kwargs"))
    assert task.args == []
    assert task.kwargs == {"process_id": PID, "user": "user"}


def test_countdown_sets_eta() -> None:
    task = decode_vector(load("celery_p2_2q_apply_async_countdown60"))
    assert task.eta == datetime(2026, 11, 21, 4, 41, 39, 467362, tzinfo=UTC)
    assert task.expires is None


def test_eta() -> None:
    task = decode_vector(load("celery_p2_2q_apply_async_eta"))
    assert task.eta == datetime(2026, 11, 21, 5, 40, 39, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("case", "expires"),
    [
        ("celery_p2_2q_apply_async_expires300", datetime(2026, 11, 21, 4, 45, 39, 487297, tzinfo=UTC)),
        ("celery_p2_2q_apply_async_expires_datetime", datetime(2026, 11, 21, 4, 50, 39, 123456, tzinfo=UTC)),
    ],
)
def test_expires(case: str, expires: datetime) -> None:
    assert decode_vector(load(case)).expires == expires


def test_countdown_expires_kwargs() -> None:
    task = decode_vector(load("celery_p2_2q_apply_async_countdown_expires_kwargs"))
    assert task.args == [PID]
    assert task.kwargs == {"user": "user"}
    assert task.eta is not None
    assert task.expires is not None
    assert task.eta < task.expires


def test_protocol_1_kwargs_countdown_expires() -> None:
    task = decode_vector(load("celery_p1_2q_apply_async_kwargs_countdown_expires"))
    assert task.protocol == 1
    assert task.name == "tasks.resume_workflow"
    assert task.kwargs == {"process_id": "11110000-0000-4000-8000-000000000003", "user": "user"}
    assert task.eta == datetime(2026, 11, 21, 4, 41, 39, 760553, tzinfo=UTC)
    assert task.expires == datetime(2026, 11, 21, 4, 45, 39, 760553, tzinfo=UTC)


def test_misc_options() -> None:
    task = decode_vector(load("celery_p2_2q_misc_options"))
    assert task.ignore_result is True
    assert not task.wants_reply
    assert task.args == ["11110000-0000-4000-8000-000000000000", "user"]


# --- decoding: refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DRAMATIQ_VECTORS, ids=lambda p: p.stem)
def test_dramatiq_vectors_are_rejected(path: Path) -> None:
    with pytest.raises(MessageRejected, match="content_type") as info:
        decode_vector(json.loads(path.read_text()))
    assert "Dramatiq" in info.value.reason


def test_dramatiq_body_with_json_content_type_is_rejected() -> None:
    body = base64.b64decode(load("dramatiq_send_new_task")["body_b64"])
    with pytest.raises(MessageRejected, match="not a protocol 1 task"):
        decode_task(body, content_type="application/json", content_encoding="utf-8", headers={})


def test_task_sent_event_is_rejected() -> None:
    with pytest.raises(MessageRejected):
        decode_vector(load("celery_event_task_sent"))


@pytest.mark.parametrize(
    ("content_type", "match"),
    [
        ("application/x-python-serialize", "pickle"),
        ("application/x-yaml", "yaml"),
        ("application/x-msgpack", "msgpack"),
        ("text/plain", "unsupported content_type"),
        (None, "missing content_type"),
    ],
)
def test_refused_content_types(content_type: str | None, match: str) -> None:
    with pytest.raises(MessageRejected, match=match):
        decode_task(b"[[], {}, {}]", content_type=content_type, content_encoding="utf-8", headers={"task": "t"})


def test_refused_compression_and_encoding() -> None:
    with pytest.raises(MessageRejected, match="compress"):
        p2([[], {}, {}], compression="application/x-gzip")
    with pytest.raises(MessageRejected, match="content_encoding"):
        decode_task(b"[]", content_type="application/json", content_encoding="binary", headers={"task": "t"})


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "utf-8"),
        (b"[[], {}]", r"\[args, kwargs, embed\]"),
        (b'{"task": "x", "id": "y"}', r"\[args, kwargs, embed\]"),
        (b'["a", {}, {}]', "args must be a list"),
        (b"[[], [], {}]", "kwargs must be an object"),
        (b"[[], {}, 3]", "embed must be an object"),
        (b"[[NaN], {}, {}]", "NaN"),
        (b'[[{"__type__": "pickle", "__value__": "x"}], {}, {}]', "unsupported kombu json envelope"),
        (b'[[{"__type__": "uuid", "__value__": {"hex": "zz"}}], {}, {}]', "invalid kombu json 'uuid'"),
        (b'[[{"__type__": "datetime", "__value__": "yesterday"}], {}, {}]', "invalid kombu json 'datetime'"),
        (b'[[{"__type__": "base64", "__value__": "!!"}], {}, {}]', "invalid kombu json 'base64'"),
    ],
)
def test_malformed_bodies(body: bytes, match: str) -> None:
    with pytest.raises(MessageRejected, match=match):
        p2(body)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"id": None}, "headers.id"),
        ({"task": ""}, "headers.task"),
        ({"eta": "soon"}, "headers.eta"),
        ({"expires": 5}, "headers.expires"),
        ({"retries": -1}, "retries"),
        ({"retries": "1"}, "retries"),
    ],
)
def test_malformed_headers(headers: dict[str, Any], match: str) -> None:
    with pytest.raises(MessageRejected, match=match) as info:
        p2([[], {}, {}], **headers)
    if headers.get("id", "tid") is not None:
        assert info.value.task_id == "tid"


def test_protocol_1_needs_task_and_id() -> None:
    for body in (b'{"task": "x"}', b'{"id": "x"}', b"[[], {}, {}]", b'"text"'):
        with pytest.raises(MessageRejected, match="protocol 1"):
            decode_task(body, content_type="application/json", content_encoding="utf-8", headers={})


def test_naive_eta_and_expires_are_utc() -> None:
    task = p2([[], {}, EMBED], eta="2026-11-21T04:41:39.5", expires="2026-11-21T05:00:00")
    assert task.eta == datetime(2026, 11, 21, 4, 41, 39, 500000, tzinfo=UTC)
    assert task.expires == datetime(2026, 11, 21, 5, 0, tzinfo=UTC)
    body = {"task": "tasks.new_task", "id": "i", "args": [], "kwargs": {}, "eta": "2026-11-21T04:41:39", "utc": True}
    v1 = decode_task(json.dumps(body).encode(), content_type="application/json", content_encoding=None, headers={})
    assert v1.eta == datetime(2026, 11, 21, 4, 41, 39, tzinfo=UTC)


def test_other_kombu_envelopes() -> None:
    body = [
        [
            {"__type__": "date", "__value__": "2026-11-21"},
            {"__type__": "time", "__value__": "04:40:39.123456"},
            {"__type__": "bytes", "__value__": "héllo"},
            {"__type__": "base64", "__value__": base64.b64encode(b"\xff\x00").decode()},
            {"__type__": "uuid", "__value__": {"hex": "11110000000040008000000000000001"}},
            {"__type__": "decimal", "__value__": "1.50"},
        ],
        {"nested": {"deeper": [{"__type__": "uuid", "__value__": {"hex": "11110000000040008000000000000001"}}]}},
        None,
    ]
    task = p2(body)
    assert task.args == [date(2026, 11, 21), time(4, 40, 39, 123456), "héllo".encode(), b"\xff\x00", PID, "1.50"]
    assert task.kwargs == {"nested": {"deeper": [PID]}}
    assert dict(task.embed) == {}


def test_header_values_as_bytes_and_ignore_result() -> None:
    task = p2([[1], {"a": 2}, EMBED], id=b"bytes-id", ignore_result=True, retries=3)
    assert (task.id, task.args, task.kwargs, task.retries, task.ignore_result) == ("bytes-id", [1], {"a": 2}, 3, True)
    assert not task.wants_reply
    assert task.reply_to is None


def test_wants_reply() -> None:
    base = CeleryTask(id="i", name="n", args=[], kwargs={})
    assert not base.wants_reply
    assert CeleryTask(id="i", name="n", args=[], kwargs={}, reply_to="q").wants_reply
    assert not CeleryTask(id="i", name="n", args=[], kwargs={}, reply_to="q", ignore_result=True).wants_reply
    assert CeleryTask(id="i", name="n", args=[], kwargs={}, correlation_id="c").reply_correlation_id == "c"


# --- encoding: rpc:// replies -----------------------------------------------------------------------------------


def reply_vector(case: str) -> tuple[dict[str, Any], datetime | None]:
    vector = load(case)
    meta = vector["body_json"]
    done = datetime.fromisoformat(meta["date_done"]) if meta["date_done"] else None
    return vector, done


def test_success_reply_is_byte_identical() -> None:
    vector, done = reply_vector("celery_rpc_reply_success_str_1_success")
    meta = vector["body_json"]
    assert success_result(meta["task_id"], meta["result"], date_done=done) == vector["body_text"].encode()
    assert encode_result(meta["task_id"], "SUCCESS", meta["result"], None, done) == vector["body_text"].encode()


def test_failure_reply_is_byte_identical() -> None:
    vector, done = reply_vector("celery_rpc_reply_failure_valueerror_1_failure")
    meta = vector["body_json"]
    exc = meta["result"]
    body = failure_result(
        meta["task_id"], exc["exc_type"], exc["exc_message"], exc["exc_module"], meta["traceback"], date_done=done
    )
    assert body == vector["body_text"].encode()


def test_custom_failure_reply_is_byte_identical() -> None:
    vector, done = reply_vector("celery_rpc_reply_failure_custom_exc_1_failure")
    meta = vector["body_json"]
    exc = meta["result"]
    body = encode_result(meta["task_id"], "FAILURE", exc, meta["traceback"], done)
    assert body == vector["body_text"].encode()


def test_started_reply_is_byte_identical() -> None:
    vector, _ = reply_vector("celery_rpc_reply_success_str_0_started")
    meta = vector["body_json"]
    assert encode_result(meta["task_id"], "STARTED", meta["result"]) == vector["body_text"].encode()


def test_revoked_reply_matches_the_worker() -> None:
    vector = load("celery_rpc_reply_revoked_expired")
    meta = vector["body_json"]
    body = json.loads(revoked_result(meta["task_id"]))
    assert list(body) == list(meta)
    assert {k: v for k, v in body.items() if k != "date_done"} == {k: v for k, v in meta.items() if k != "date_done"}
    assert datetime.fromisoformat(body["date_done"]).tzinfo is not None


def test_not_registered_reply_matches_the_worker() -> None:
    vector = load("celery_rpc_reply_failure_unregistered_task")
    meta = vector["body_json"]
    done = datetime.fromisoformat(meta["date_done"])
    body = failure_result(meta["task_id"], "NotRegistered", ["tasks.unknown_task"], "celery.exceptions", date_done=done)
    assert body == vector["body_text"].encode()
    assert json.loads(not_registered_result(meta["task_id"], "tasks.unknown_task"))["result"] == meta["result"]


def test_uuid_results_are_plain_strings() -> None:
    """The real worker wraps a UUID in a kombu envelope; we send the plain string orchestrator-json clients expect."""
    import uuid

    vector, done = reply_vector("celery_rpc_reply_success_dict_uuid_1_success")
    meta = vector["body_json"]
    pid = uuid.UUID(hex=meta["result"]["process_id"]["__value__"]["hex"])
    result = {"process_id": pid, "user": "user", "n": 1.5}
    body = success_result(meta["task_id"], result, date_done=done)
    expected = vector["body_text"].replace(
        json.dumps(meta["result"]["process_id"]),
        json.dumps(str(pid)),
    )
    assert body == expected.encode()


def test_exception_result_describes_like_celery() -> None:
    class CustomError(Exception):
        pass

    body = json.loads(exception_result("tid", CustomError("custom failure", 42, object()), "Traceback ..."))
    assert body["status"] == "FAILURE"
    assert body["traceback"] == "Traceback ..."
    result = body["result"]
    assert result["exc_type"].endswith("CustomError")
    assert result["exc_module"] == __name__
    assert result["exc_message"][:2] == ["custom failure", 42]
    assert result["exc_message"][2].startswith("<object object")  # not JSON: repr, as Celery's ensure_serializable
    value = json.loads(exception_result("t", ValueError("boom")))["result"]
    assert value == {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}


def test_encode_result_key_order_and_separators() -> None:
    body = encode_result("tid", "SUCCESS", {"a": [1, 2]}, date_done=datetime(2026, 1, 1, tzinfo=UTC))
    assert body == (
        b'{"status": "SUCCESS", "result": {"a": [1, 2]}, "traceback": null, "children": [], '
        b'"date_done": "2026-01-01T00:00:00+00:00", "task_id": "tid"}'
    )
    assert json.loads(encode_result("t", "STARTED", None))["date_done"] is None
    assert json.loads(encode_result("t", "SUCCESS", None))["date_done"] is not None


# --- topology checks --------------------------------------------------------------------------------------------


def test_queue_collision_same_broker() -> None:
    with pytest.raises(QueueCollisionError) as info:
        check_queue_collisions(["tasks", "workflows", "reconcile"], ["tasks", "workflows"], same_broker=True)
    message = str(info.value)
    assert "'tasks'" in message
    assert "'workflows'" in message
    assert "reconcile" not in message
    assert "CELERY_BROKER_URL" in message
    assert "TASKS_QUEUE/WORKFLOWS_QUEUE" in message


def test_queue_collision_with_dramatiq_derivatives() -> None:
    with pytest.raises(QueueCollisionError, match=r"'workflows\.XQ' \(derived from Dramatiq queue 'workflows'\)"):
        check_queue_collisions(["workflows.XQ"], ["workflows"], same_broker=True)
    with pytest.raises(QueueCollisionError, match=r"tasks\.DQ"):
        check_queue_collisions(["new_tasks", "tasks.DQ"], ["tasks"], same_broker=True)


def test_no_collision() -> None:
    upstream = ["new_tasks", "new_workflows", "resume_tasks", "resume_workflows"]
    check_queue_collisions(upstream, ["tasks", "workflows"], same_broker=True)
    check_queue_collisions(["tasks", "workflows"], ["tasks", "workflows"], same_broker=False)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://other:pw@127.0.0.1/", True),
        ("amqp://h/", "amqp://h", True),
        ("amqp://h/%2F", "amqp://h/", True),
        ("amqp://h/", "amqp://h/celery", False),
        ("amqp://h/celery", "amqp://h:5672/celery?heartbeat=30", True),
        ("amqp://h1/", "amqp://h2/", False),
        ("amqp://h:5672/", "amqp://h:5673/", False),
        ("amqps://h/", "amqp://h/", False),
    ],
)
def test_same_vhost(a: str, b: str, same: bool) -> None:
    assert same_vhost(a, b) is same


@pytest.mark.parametrize("name", ["", "amq.gen-x", "1abc", "has space"])
def test_invalid_queue_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        validate_queue_name(name)


@pytest.mark.parametrize("name", ["celery", "celeryev", "Celery.dead"])
async def test_dead_letter_queue_refuses_celery_names(name: str) -> None:
    with pytest.raises(ValueError, match="reserved for Celery"):
        await declare_dead_letter_queue(None, name)  # type: ignore[arg-type]  # refused before any I/O
