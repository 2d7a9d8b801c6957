"""Celery's task message (protocols 1 and 2) and rpc:// result body, without I/O.

Decoding is strict on purpose: anything a real Celery 5.x client would not send is refused with a reason, so
that the consumer can dead-letter it instead of guessing. See the shared Celery wire-format reference, §1-3.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Final

__all__ = [
    "READY_STATES",
    "CeleryTask",
    "MessageRejected",
    "decode_task",
    "encode_result",
    "exception_result",
    "failure_result",
    "not_registered_result",
    "revoked_result",
    "success_result",
]

JSON_CONTENT_TYPE: Final = "application/json"
READY_STATES: Final = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

_REFUSED_CONTENT_TYPES: Final = {
    "application/x-python-serialize": "pickle",
    "application/x-yaml": "yaml",
    "application/x-msgpack": "msgpack",
    "application/data": "raw binary",
    "application/text": "raw text",
}
_UTF8: Final = frozenset({"utf-8", "utf8"})


class MessageRejected(Exception):  # noqa: N818 - the name agreed with the shim
    """A delivery that is not a Celery task message we can run; `reason` is meant for logs and the DLQ header."""

    def __init__(self, reason: str, *, task_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id


@dataclass(frozen=True)
class CeleryTask:
    """One decoded task message.

    `args`/`kwargs` are JSON values with kombu envelopes unwrapped: uuid and decimal become the strings an
    orchestrator-json client sends (`str(UUID)`, `"1.50"`); datetime/date/time/bytes become Python objects, as
    kombu decodes them. `eta`/`expires` are always timezone-aware.
    """

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    reply_to: str | None = None
    correlation_id: str | None = None
    ignore_result: bool = False
    protocol: int = 2
    root_id: str | None = None
    parent_id: str | None = None
    embed: Mapping[str, Any] = field(default_factory=dict)
    """Protocol 2's third body element (callbacks, errbacks, chain, chord); kept for logging, never executed."""

    @property
    def wants_reply(self) -> bool:
        """The rpc:// backend expects a result only if the client named a reply queue and did not ignore it."""
        return bool(self.reply_to) and not self.ignore_result

    @property
    def reply_correlation_id(self) -> str:
        return self.correlation_id or self.id


# --------------------------------------------------------------------------------------------------- decoding


def _unwrap_uuid(value: Any) -> str:
    if isinstance(value, Mapping) and isinstance(value.get("hex"), str):
        return str(uuid.UUID(hex=value["hex"]))
    if isinstance(value, str):
        return str(uuid.UUID(value))
    raise ValueError("uuid envelope without a hex value")


def _decode_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("bytes envelope without a string value")
    return value.encode("utf-8")


def _decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("base64 envelope without a string value")
    return base64.b64decode(value.encode("ascii"), validate=True)


def _iso(kind: Callable[[str], Any]) -> Callable[[Any], Any]:
    def decode(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("envelope without an ISO-8601 string value")
        return kind(value)

    return decode


def _decimal_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("decimal envelope without a string value")
    Decimal(value)  # validates; the string itself is what orchestrator-json would have sent
    return value


# kombu.utils.json's decoders, except that uuid and decimal become the strings orchestrator-json sends, so that a
# handler sees the same values whichever serializer the client used.
_ENVELOPES: Final[dict[str, Callable[[Any], Any]]] = {
    "uuid": _unwrap_uuid,
    "datetime": _iso(datetime.fromisoformat),
    "date": _iso(lambda text: datetime.fromisoformat(text).date()),
    "time": _iso(time.fromisoformat),
    "decimal": _decimal_str,
    "bytes": _decode_bytes,
    "base64": _decode_base64,
}


def _object_hook(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"__type__", "__value__"}:
        kind = obj["__type__"]
        decoder = _ENVELOPES.get(kind) if isinstance(kind, str) else None
        if decoder is None:
            raise MessageRejected(f"unsupported kombu json envelope type {kind!r}")
        try:
            return decoder(obj["__value__"])
        except (ValueError, TypeError, binascii.Error) as exc:
            raise MessageRejected(f"invalid kombu json {kind!r} envelope: {exc}") from None
    return obj


def _refuse_constant(name: str) -> Any:
    raise MessageRejected(f"non-standard JSON constant {name}")


def _loads(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageRejected(f"body is not valid utf-8: {exc}") from None
    try:
        return json.loads(text, object_hook=_object_hook, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise MessageRejected(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MessageRejected("body JSON is nested too deeply") from None


def _check_envelope(content_type: str | None, content_encoding: str | None, headers: Mapping[str, Any]) -> None:
    if content_type is None:
        raise MessageRejected("missing content_type (not a Celery message; Dramatiq messages have none)")
    if content_type != JSON_CONTENT_TYPE:
        serializer = _REFUSED_CONTENT_TYPES.get(content_type)
        if serializer is not None:
            raise MessageRejected(f"refused {serializer} serializer (content_type {content_type!r}); only json")
        raise MessageRejected(f"unsupported content_type {content_type!r}; only {JSON_CONTENT_TYPE!r}")
    if content_encoding is not None and content_encoding.lower() not in _UTF8:
        raise MessageRejected(f"unsupported content_encoding {content_encoding!r}; only utf-8")
    if headers.get("compression") is not None:
        raise MessageRejected(f"compressed messages are not supported (compression {headers['compression']!r})")


def _text(value: Any) -> Any:
    """AMQP long strings may reach us as bytes, depending on the client library."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _required_str(value: Any, what: str, task_id: str | None = None) -> str:
    value = _text(value)
    if not isinstance(value, str) or not value:
        raise MessageRejected(f"{what} must be a non-empty string, got {value!r}", task_id=task_id)
    return value


def _optional_str(value: Any, what: str, task_id: str) -> str | None:
    value = _text(value)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageRejected(f"{what} must be a string or null, got {value!r}", task_id=task_id)
    return value


def _timestamp(value: Any, what: str, task_id: str) -> datetime | None:
    value = _text(value)
    if value is None:
        return None
    if isinstance(value, datetime):  # a kombu envelope, or an AMQP timestamp header
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise MessageRejected(f"{what} is not an ISO-8601 timestamp: {value!r}", task_id=task_id) from None
    else:
        raise MessageRejected(f"{what} must be an ISO-8601 string or null, got {value!r}", task_id=task_id)
    # Celery sends UTC with an offset; a naive value (old clients, `utc: true` in protocol 1) is taken as UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _retries(value: Any, task_id: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MessageRejected(f"retries must be a non-negative integer, got {value!r}", task_id=task_id)
    return value


def _args_kwargs(args: Any, kwargs: Any, task_id: str) -> tuple[list[Any], dict[str, Any]]:
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list):
        raise MessageRejected(f"args must be a list, got {type(args).__name__}", task_id=task_id)
    if not isinstance(kwargs, dict):
        raise MessageRejected(f"kwargs must be an object, got {type(kwargs).__name__}", task_id=task_id)
    return args, kwargs


def _decode_v2(
    payload: Any, headers: Mapping[str, Any], reply_to: str | None, correlation_id: str | None
) -> CeleryTask:
    task_id = _required_str(headers.get("id"), "headers.id")
    name = _required_str(headers.get("task"), "headers.task", task_id)
    if not isinstance(payload, list) or len(payload) != 3:
        raise MessageRejected("protocol 2 body must be a JSON array [args, kwargs, embed]", task_id=task_id)
    raw_args, raw_kwargs, embed = payload
    args, kwargs = _args_kwargs(raw_args, raw_kwargs, task_id)
    if embed is None:
        embed = {}
    if not isinstance(embed, dict):
        raise MessageRejected(f"embed must be an object, got {type(embed).__name__}", task_id=task_id)
    return CeleryTask(
        id=task_id,
        name=name,
        args=args,
        kwargs=kwargs,
        eta=_timestamp(headers.get("eta"), "headers.eta", task_id),
        expires=_timestamp(headers.get("expires"), "headers.expires", task_id),
        retries=_retries(headers.get("retries"), task_id),
        reply_to=reply_to or None,
        correlation_id=correlation_id or None,
        ignore_result=bool(headers.get("ignore_result")),
        protocol=2,
        root_id=_optional_str(headers.get("root_id"), "headers.root_id", task_id),
        parent_id=_optional_str(headers.get("parent_id"), "headers.parent_id", task_id),
        embed=embed,
    )


def _decode_v1(payload: Any, reply_to: str | None, correlation_id: str | None) -> CeleryTask:
    if not isinstance(payload, dict) or "task" not in payload or "id" not in payload:
        raise MessageRejected("no 'task' header (protocol 2) and the body is not a protocol 1 task object")
    task_id = _required_str(payload["id"], "body.id")
    name = _required_str(payload["task"], "body.task", task_id)
    args, kwargs = _args_kwargs(payload.get("args"), payload.get("kwargs"), task_id)
    embed = {key: payload.get(key) for key in ("callbacks", "errbacks", "chord") if payload.get(key) is not None}
    return CeleryTask(
        id=task_id,
        name=name,
        args=args,
        kwargs=kwargs,
        eta=_timestamp(payload.get("eta"), "body.eta", task_id),
        expires=_timestamp(payload.get("expires"), "body.expires", task_id),
        retries=_retries(payload.get("retries"), task_id),
        reply_to=reply_to or None,
        correlation_id=correlation_id or None,
        ignore_result=bool(payload.get("ignore_result")),
        protocol=1,
        embed=embed,
    )


def decode_task(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any] | None,
    reply_to: str | None = None,
    correlation_id: str | None = None,
) -> CeleryTask:
    """Decode one AMQP delivery into a `CeleryTask`, or raise `MessageRejected` saying why it is not one.

    Protocol 2 when `task` is in the headers (body `[args, kwargs, embed]`), protocol 1 otherwise (body object
    with `task` and `id`), as Celery's worker decides.
    """
    headers = headers or {}
    _check_envelope(content_type, content_encoding, headers)
    payload = _loads(body)
    if "task" in headers:
        return _decode_v2(payload, headers, reply_to, correlation_id)
    return _decode_v1(payload, reply_to, correlation_id)


# --------------------------------------------------------------------------------------------------- results


def _result_default(obj: Any) -> Any:
    # Plain strings rather than kombu envelopes: orchestrator-json clients do not unwrap envelopes (§6).
    if isinstance(obj, uuid.UUID | Decimal):
        return str(obj)
    if isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _dumps(obj: Any) -> str:
    # json.dumps' defaults are kombu's: ", " / ": " separators and ensure_ascii.
    return json.dumps(obj, default=_result_default, allow_nan=False)


def encode_result(
    task_id: str,
    status: str,
    result: Any,
    traceback: str | None = None,
    date_done: datetime | None = None,
) -> bytes:
    """The rpc:// backend's reply body, key for key as Celery 5.7's worker writes it.

    `date_done` defaults to now for the ready states and stays null otherwise (STARTED, RETRY).
    """
    if date_done is None and status in READY_STATES:
        date_done = datetime.now(UTC)
    meta = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": date_done.isoformat() if date_done is not None else None,
        "task_id": task_id,
    }
    return _dumps(meta).encode("utf-8")


def success_result(task_id: str, result: Any, *, date_done: datetime | None = None) -> bytes:
    return encode_result(task_id, "SUCCESS", result, None, date_done)


def _serializable(items: Sequence[Any]) -> list[Any]:
    """Celery's `ensure_serializable`: keep what JSON can carry, repr() the rest."""
    safe: list[Any] = []
    for item in items:
        try:
            _dumps(item)
        except (TypeError, ValueError):
            safe.append(repr(item))
        else:
            safe.append(item)
    return safe


def failure_result(
    task_id: str,
    exc_type: str,
    exc_message: Sequence[Any],
    exc_module: str = "builtins",
    traceback: str | None = None,
    *,
    status: str = "FAILURE",
    date_done: datetime | None = None,
) -> bytes:
    """A failure reply; the client re-raises `exc_module.exc_type(*exc_message)` from `AsyncResult.get()`."""
    exc = {"exc_type": exc_type, "exc_message": _serializable(list(exc_message)), "exc_module": exc_module}
    return encode_result(task_id, status, exc, traceback, date_done)


def exception_result(task_id: str, exc: BaseException, traceback: str | None = None) -> bytes:
    """A FAILURE reply for a Python exception, described the way Celery's `prepare_exception` does."""
    kind = type(exc)
    return failure_result(task_id, kind.__qualname__, exc.args, kind.__module__, traceback)


def revoked_result(task_id: str, reason: str = "expired") -> bytes:
    """What a Celery worker replies for a task whose `expires` has passed: `TaskRevokedError('expired')`."""
    return failure_result(task_id, "TaskRevokedError", [reason], "celery.exceptions", status="REVOKED")


def not_registered_result(task_id: str, name: str) -> bytes:
    """What a Celery worker replies for an unknown task name: `NotRegistered(name)`."""
    return failure_result(task_id, "NotRegistered", [name], "celery.exceptions")
