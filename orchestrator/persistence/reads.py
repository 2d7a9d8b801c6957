"""Reads of processes and workflows outside a run: listings with filters, sorting and paging, a process's summary.

Field names that come from a request are looked up in whitelists (`PROCESS_FIELDS`, `OPERATORS`, `DIRECTIONS`)
and only the whitelisted SQL is spliced into a statement; every value travels as a bind parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

import asyncpg

from orchestrator.dsl import jsonutil
from orchestrator.persistence.pages import SortKey, keyset_after


class QueryError(ValueError):
    """A filter, sort or range the listing cannot apply (unknown field, value of the wrong type, bad range)."""


class Kind(Enum):
    TEXT = "text"
    UUID = "uuid"
    BOOL = "boolean"
    TIME = "timestamptz"


@dataclass(frozen=True)
class Field:
    column: str
    kind: Kind
    lowercase: bool = False
    """Values are stored in lower case (statuses): a text match without wildcards is an equality, which the index
    serves, instead of ILIKE, which scans every row."""
    nullable: bool = False


PROCESS_FIELDS: Mapping[str, Field] = {
    "process_id": Field("p.pid", Kind.UUID),
    "workflow_id": Field("p.workflow_id", Kind.UUID),
    "workflow_name": Field("w.name", Kind.TEXT),
    "workflow_target": Field("w.target", Kind.TEXT),
    "target": Field("w.target", Kind.TEXT),
    "assignee": Field("p.assignee", Kind.TEXT),
    "last_status": Field("p.last_status", Kind.TEXT, lowercase=True),
    "last_step": Field("p.last_step", Kind.TEXT, nullable=True),
    "started_at": Field("p.started_at", Kind.TIME),
    "last_modified_at": Field("p.last_modified_at", Kind.TIME),
    "failed_reason": Field("p.failed_reason", Kind.TEXT, nullable=True),
    "traceback": Field("p.traceback", Kind.TEXT, nullable=True),
    "created_by": Field("p.created_by", Kind.TEXT, nullable=True),
    "is_task": Field("p.is_task", Kind.BOOL),
    "note": Field("p.note", Kind.TEXT, nullable=True),
}
"""Process fields a listing may filter and sort on (snake_case), and the SQL each stands for."""

OPERATORS: Mapping[str, str] = {"=": "=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
MAX_ROW = 2**62
"""Range bounds above this are refused rather than overflowing PostgreSQL's bigint."""
DIRECTIONS: Mapping[str, str] = {"asc": "ASC", "desc": "DESC"}


@dataclass(frozen=True)
class Condition:
    """`field op value`; several values mean "any of them" (exact); `negate` keeps the rows that do not match."""

    field: str
    values: tuple[str, ...]
    operator: str = "="
    negate: bool = False


@dataclass(frozen=True)
class Order:
    field: str
    direction: str = "asc"


_PROCESS_COLUMNS = """
    p.pid AS process_id, p.workflow_id, w.name AS workflow_name, w.target AS workflow_target, p.is_task,
    p.created_by, p.failed_reason, p.traceback, p.started_at, p.last_modified_at, p.last_status, p.last_step,
    p.assignee, p.note
"""


def _field(name: str) -> Field:
    try:
        return PROCESS_FIELDS[name]
    except KeyError:
        raise QueryError(f"Unknown field: {name}") from None


def _value(kind: Kind, text: str) -> Any:
    try:
        if kind is Kind.UUID:
            return UUID(text)
        if kind is Kind.TIME:
            return datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"Not a valid {kind.value}: {text!r}") from None
    if kind is Kind.BOOL:
        if text.lower() not in ("true", "false"):
            raise QueryError(f"Not a valid boolean: {text!r}")
        return text.lower() == "true"
    return text


class _Params:
    """Bind parameters collected while a statement is assembled."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _where(conditions: Sequence[Condition], params: _Params) -> str:
    clauses = []
    for condition in conditions:
        field = _field(condition.field)
        operator = OPERATORS.get(condition.operator)
        if operator is None or (operator != "=" and field.kind is not Kind.TIME):
            raise QueryError(f"Operator {condition.operator!r} does not apply to {condition.field}")
        values = [_value(field.kind, v) for v in condition.values]
        if len(values) > 1:
            clause = f"{field.column} = ANY({params.add(values)}::{field.kind.value}[])"
        elif field.lowercase and not any(c in values[0] for c in "%_\\"):
            clause = f"{field.column} = {params.add(values[0].lower())}"
        elif field.kind is Kind.TEXT:
            clause = f"{field.column} ILIKE {params.add(values[0])}"
        else:
            clause = f"{field.column} {operator} {params.add(values[0])}"
        clauses.append(f"({clause}) IS NOT TRUE" if condition.negate else clause)
    return " AND ".join(clauses) or "true"


DEFAULT_ORDER = (SortKey("p.started_at", descending=True), SortKey("p.pid"))
"""Newest first; the process id breaks ties, so that the order is total (a keyset position is one row)."""


def sort_keys(orders: Sequence[Order]) -> tuple[SortKey, ...]:
    """The ORDER BY's terms for `orders`, the process id last; text sorts case-insensitively."""
    keys = []
    for order in orders:
        field = _field(order.field)
        direction = DIRECTIONS.get(order.direction.lower())
        if direction is None:
            raise QueryError(f"Unknown sort direction: {order.direction!r}")
        column = f"lower({field.column})" if field.kind is Kind.TEXT else field.column
        keys.append(SortKey(column, direction == "DESC", field.nullable))
    return (*keys, SortKey("p.pid")) if keys else DEFAULT_ORDER


def _order_by(keys: Sequence[SortKey]) -> str:
    return ", ".join(f"{k.expression}{' DESC' if k.descending else ''}" for k in keys)


_PYTHON_TYPES = {Kind.TIME: datetime, Kind.UUID: UUID, Kind.BOOL: bool, Kind.TEXT: str}


def _checked_position(orders: Sequence[Order], after: Sequence[Any]) -> Sequence[Any]:
    """A position (from a client's cursor) that fits the sort: one value per key, each of its key's type (NULL
    only where the column may be NULL), so that a forged cursor is a QueryError, never a driver error."""
    fields = [_field(o.field) for o in orders]
    kinds = [(f.kind, f.nullable) for f in fields] if fields else [(Kind.TIME, False)]
    kinds.append((Kind.UUID, False))
    if len(after) != len(kinds) or not all(
        (value is None and nullable) or (type(value) is _PYTHON_TYPES[kind])
        for (kind, nullable), value in zip(kinds, after, strict=True)
    ):
        raise QueryError("Invalid cursor: it does not fit this sort and filter; start again from the first page")
    return after


@dataclass(frozen=True)
class ProcessListing:
    rows: list[dict[str, Any]]
    total: int | None
    """With a window from the start (`range`): the matching rows, counted exactly up to `EXACT_TOTAL_UP_TO`."""
    next_position: tuple[Any, ...] | None
    """When more rows follow a page: the sort key values of its last row, where the next page starts."""


async def list_processes(
    pool: asyncpg.Pool,
    conditions: Sequence[Condition] = (),
    orders: Sequence[Order] = (),
    window: tuple[int, int] | None = None,
    after: Sequence[Any] | None = None,
    *,
    total: bool = True,
) -> ProcessListing:
    """Processes matching every condition, in order. With `window=(start, end)`: rows [start, end) and the total
    (OFFSET paging: a page costs as many rows as it skips). With `after` (a `next_position`) as well: the
    `end - start` rows after that position, from `start` = 0 on, and no total (keyset paging: every page costs
    the first page's). `total=False`: no total."""
    params = _Params()
    where = _where(conditions, params)
    keys = sort_keys(orders)
    if after is not None:
        if window is None:
            raise QueryError("A cursor needs a page size")
        where = f"{where} AND {keyset_after(keys, _checked_position(orders, after), params.add)}"
    positions = ", ".join(f"{k.expression} AS _key{i}" for i, k in enumerate(keys))
    sql = f"""SELECT {_PROCESS_COLUMNS}, {positions} FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
               WHERE {where} ORDER BY {_order_by(keys)}"""
    if window is None:
        rows = await pool.fetch(sql, *params.values)
        return ProcessListing(_without_keys(rows, len(keys)), None, None)
    start, end = window
    if not 0 <= start < end <= MAX_ROW:
        raise QueryError("Invalid range: need 0 <= start < end <= 2**62")
    page = f"{sql} OFFSET {params.add(start)} LIMIT {params.add(end - start + 1)}"
    count: int | None = None
    if after is not None or not total:
        rows = await pool.fetch(page, *params.values)
    elif _countable(conditions):
        rows, count = await _page_with_counted_total(pool, page, where, keys, params.values)
    else:
        rows, count = await _page_with_total(pool, page, where, params.values)
    shown = rows[: end - start]
    more = len(rows) > len(shown)
    position = tuple(shown[-1][f"_key{i}"] for i in range(len(keys))) if more else None
    return ProcessListing(_without_keys(shown, len(keys)), count, position)


def _countable(conditions: Sequence[Condition]) -> bool:
    """Whether the trigger-kept `process_status_counts` (migration 0006) count the matching processes exactly:
    when the conditions name only the status and the kind, the columns the counters are keyed by (the same
    predicate holds for a group of counters as for each of its processes, wildcards and negations included)."""
    return all(condition.field in ("last_status", "is_task") for condition in conditions)


async def _page_with_counted_total(
    pool: asyncpg.Pool, page: str, where: str, keys: Sequence[SortKey], values: Sequence[Any]
) -> tuple[list[asyncpg.Record], int]:
    """The page and its exact total from the status counters, in one statement (one round trip): the counters'
    table, aliased `p`, has the two columns the conditions name. An empty page is one row of NULLs."""
    order = ", ".join(f"page._key{i}{' DESC' if k.descending else ''}" for i, k in enumerate(keys))
    rows = await pool.fetch(
        f"""SELECT t.total AS _total, page.*
              FROM (SELECT coalesce(sum(p.n), 0)::bigint AS total FROM process_status_counts p WHERE {where}) t
              LEFT JOIN LATERAL ({page}) page ON true
             ORDER BY {order}""",
        *values,
    )
    total = int(rows[0]["_total"]) if rows else 0
    last = f"_key{len(keys) - 1}"  # the process id: NULL only in the empty page's row
    return [r for r in rows if r[last] is not None], total


async def _page_with_total(
    pool: asyncpg.Pool, page: str, where: str, values: Sequence[Any]
) -> tuple[list[asyncpg.Record], int]:
    """The page and the planner's estimate of the total (two round trips), or an exact count when the estimate is
    small enough to count, in the page's snapshot."""
    # Every process has its workflow (a foreign key): without a condition on the workflow the count needs only
    # `processes`, which a status filter then counts from the status index alone.
    joined = "JOIN workflows w ON w.workflow_id = p.workflow_id " if "w." in where else ""
    source = f"FROM processes p {joined}WHERE {where}"
    where_values = values[:-2]  # without the page's OFFSET and LIMIT
    estimate = await _estimate(pool, source, where_values)
    if estimate > 2 * EXACT_TOTAL_UP_TO:
        return await pool.fetch(page, *values), estimate
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        bounded = f"SELECT count(*) FROM (SELECT 1 {source} LIMIT {EXACT_TOTAL_UP_TO + 1}) c"
        counted = int(await conn.fetchval(bounded, *where_values))
        rows = await conn.fetch(page, *values)
    return rows, counted if counted <= EXACT_TOTAL_UP_TO else max(counted, estimate)


def _without_keys(rows: Sequence[asyncpg.Record], count: int) -> list[dict[str, Any]]:
    keys = {f"_key{i}" for i in range(count)}
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


EXACT_TOTAL_UP_TO = 10_000
"""A listing filtered on more than the status and the kind (which the status counters count exactly) has its total
counted exactly up to this many rows; above, it is the planner's estimate. An exact count of a million rows takes
hundreds of milliseconds on every page; the estimate, a plan."""


async def _estimate(pool: asyncpg.Pool, source: str, values: Sequence[Any]) -> int:
    """The planner's estimate of the number of rows of `source`."""
    plan = await pool.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 {source}", *values)
    if isinstance(plan, str):  # a connection without the pool's json codec
        plan = jsonutil.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


async def process_summary(pool: asyncpg.Pool, pid: UUID) -> dict[str, Any] | None:
    """Status, last step and workflow of a process: what authorization and live streams need, nothing more."""
    row = await pool.fetchrow(
        """SELECT p.last_status, p.last_step, w.name AS workflow_name
             FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id WHERE p.pid = $1""",
        pid,
    )
    return dict(row.items()) if row is not None else None


async def is_task(pool: asyncpg.Pool, pid: UUID) -> bool | None:
    """Whether a process runs a task; None if there is no such process."""
    value: bool | None = await pool.fetchval("SELECT is_task FROM processes WHERE pid = $1", pid)
    return value


async def task_ids(pool: asyncpg.Pool, statuses: Iterable[str]) -> list[UUID]:
    """The processes of tasks in any of `statuses`."""
    rows = await pool.fetch(
        "SELECT pid FROM processes WHERE is_task AND last_status = ANY($1::text[])", [str(s) for s in statuses]
    )
    return [r["pid"] for r in rows]


_WORKFLOW_COLUMNS = "workflow_id, name, target, is_task, description, created_at"


async def list_workflows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE deleted_at IS NULL ORDER BY name")
    return [dict(r.items()) for r in rows]


async def get_workflow(pool: asyncpg.Pool, workflow_id: UUID) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = $1 AND deleted_at IS NULL", workflow_id
    )
    return dict(row.items()) if row is not None else None


async def database_answers(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT true"))
