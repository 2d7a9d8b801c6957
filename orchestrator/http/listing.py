"""orchestrator-core's list query language (`filter`, `sort`, `range`) and its weak ETag.

    filter=lastStatus,completed-failed,isTask,false,startedAt,>=2024-01-01T00:00:00+00:00,note,!%urgent%
    sort=startedAt,desc,workflowName,asc
    range=0,25

and, beyond orchestrator-core, keyset paging: `limit=25` alone (a first page without a total), then
`after=<cursor>&limit=25` with the same `filter` and `sort`, the cursor taken from the previous answer's
`Link: <...>; rel="next"` (which a `range` answer carries too). A cursor is the last row's sort key, so the next page
starts there through the index instead of skipping rows: deep pages cost what the first does.

Field names may be camelCase or snake_case. A value with `-` or `|` is a list of exact alternatives (only `|` for
ids and dates, which contain dashes); `!` negates; dates take a `>`, `>=`, `<` or `<=` prefix; other text matches
case-insensitively (`%` is a wildcard). Unlike orchestrator-core, a bad sort direction is a 400, not a 500, and
`If-None-Match` accepts the ETag as sent (`W/"…"`) as well as its bare hex.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from orchestrator.dsl import jsonutil
from orchestrator.services import PROCESS_FIELDS, Condition, Kind, Order, QueryError

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_OPERATOR = re.compile(r"^(>=|<=|>|<)")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    tokens = text.split(",")
    if len(tokens) % 2:
        raise QueryError(f"Invalid number of {what} arguments")
    return list(zip(tokens[::2], tokens[1::2], strict=True))


def parse_filter(text: str | None) -> list[Condition]:
    if not text:
        return []
    conditions = []
    for name, raw in _pairs(text, "filter"):
        field = _snake(name)
        if field not in PROCESS_FIELDS:
            raise QueryError(f"Invalid filter arguments: unknown field {name!r}")
        kind = PROCESS_FIELDS[field].kind
        negate = raw.startswith("!")
        value = raw[1:] if negate else raw
        operator = "="
        if kind is Kind.TIME and (match := _OPERATOR.match(value)):
            operator, value = match.group(1), value[match.end() :]
        separators = "|" if kind in (Kind.UUID, Kind.TIME) else "|-"
        values = tuple(v for v in re.split(f"[{re.escape(separators)}]", value) if v) or ("",)
        conditions.append(Condition(field, values, operator, negate))
    return conditions


def parse_sort(text: str | None) -> list[Order]:
    if not text or "," not in text:
        return []
    orders = []
    for name, direction in _pairs(text, "sort"):
        field = _snake(name)
        if field not in PROCESS_FIELDS:
            raise QueryError(f"Invalid sort arguments: unknown field {name!r}")
        orders.append(Order(field, direction))
    return orders


def parse_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.split(",")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise QueryError("Invalid range: expected range=start,end") from None
    return start, end


MAX_LIMIT = 10_000
"""The largest `limit` (keyset page size)."""
DEFAULT_LIMIT = 25
"""Rows per page after a cursor given without `limit`."""
_CURSOR_VERSION = 1
_BAD_CURSOR = "Invalid cursor (after=): use the Link of the previous page, with the same filter and sort"


def parse_limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        limit = int(text)
    except ValueError:
        raise QueryError("Invalid limit: expected a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"Invalid limit: need 1 <= limit <= {MAX_LIMIT}")
    return limit


def _signature(conditions: Sequence[Condition], orders: Sequence[Order]) -> str:
    """What a cursor is valid for: the filter and the sort as parsed."""
    return f"{zlib.crc32(repr((list(conditions), list(orders))).encode()):08x}"


def _tagged(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, UUID):
        return {"u": str(value)}
    return value


def _untagged(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        if tag == "t" and isinstance(text, str):
            return datetime.fromisoformat(text)
        if tag == "u" and isinstance(text, str):
            return UUID(text)
        raise ValueError(tag)
    if value is None or isinstance(value, bool | str):
        return value
    raise ValueError(value)


def encode_cursor(position: Sequence[Any], conditions: Sequence[Condition], orders: Sequence[Order]) -> str:
    """An opaque token for `after=`: the position (a page's last sort key) and what it is valid for."""
    data = [_CURSOR_VERSION, _signature(conditions, orders), [_tagged(v) for v in position]]
    return base64.urlsafe_b64encode(jsonutil.dumps(data)).decode().rstrip("=")


def decode_cursor(text: str, conditions: Sequence[Condition], orders: Sequence[Order]) -> tuple[Any, ...]:
    """The position in a token from `encode_cursor`; QueryError if it is not one, or was made for another filter
    or sort. (Whether its values fit the sort's columns is checked where the statement is built.)"""
    try:
        data = jsonutil.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        version, signature, values = data
        if version != _CURSOR_VERSION or signature != _signature(conditions, orders) or not isinstance(values, list):
            raise ValueError(signature)
        return tuple(_untagged(v) for v in values)
    except (ValueError, TypeError, binascii.Error):
        raise QueryError(_BAD_CURSOR) from None


def etag(rows: Sequence[dict[str, Any]]) -> str:
    """crc32 over (process id, last change) of the rows in order, as hex: any change to a listed process changes it."""
    checksum = 0
    for row in rows:
        checksum = zlib.crc32(f"{row['process_id']}{row['last_modified_at'].isoformat()}".encode(), checksum)
    return f"{checksum:08x}"


def matches(if_none_match: str | None, tag: str) -> bool:
    """Does `If-None-Match` name this tag? Accepts `W/"hex"`, `"hex"`, bare `hex` (orchestrator-core clients), `*`."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        value = candidate.strip().removeprefix("W/").strip('"')
        if value in (tag, "*"):
            return True
    return False
