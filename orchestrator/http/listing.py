"""orchestrator-core's list query language (`filter`, `sort`, `range`) and its weak ETag.

    filter=lastStatus,completed-failed,isTask,false,startedAt,>=2024-01-01T00:00:00+00:00,note,!%urgent%
    sort=startedAt,desc,workflowName,asc
    range=0,25

Field names may be camelCase or snake_case. A value with `-` or `|` is a list of exact alternatives (only `|` for
ids and dates, which contain dashes); `!` negates; dates take a `>`, `>=`, `<` or `<=` prefix; other text matches
case-insensitively (`%` is a wildcard). Unlike orchestrator-core, a bad sort direction is a 400, not a 500, and
`If-None-Match` accepts the ETag as sent (`W/"…"`) as well as its bare hex.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

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
