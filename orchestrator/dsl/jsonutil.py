"""JSON with orchestrator-core's encoding rules, on orjson.

States are normalised through this each time they are persisted, so values that cross a step boundary are
JSON-compatible: UUID → str, datetime → ISO with seconds precision, Decimal → str, set → list, pydantic → dict.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat(timespec="seconds")
    if isinstance(obj, date | time):
        return obj.isoformat()
    if isinstance(obj, UUID | Decimal | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(obj)
    if isinstance(obj, ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Interface):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Enum):
        return obj.value
    if hasattr(obj, "__json__"):
        return obj.__json__()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=_OPTIONS)


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def normalise(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON: what a step hands on is exactly what a reload would give."""
    result: dict[str, Any] = orjson.loads(dumps(obj))
    return result
