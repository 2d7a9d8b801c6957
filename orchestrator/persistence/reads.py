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


PROCESS_FIELDS: Mapping[str, Field] = {
    "process_id": Field("p.pid", Kind.UUID),
    "workflow_id": Field("p.workflow_id", Kind.UUID),
    "workflow_name": Field("w.name", Kind.TEXT),
    "workflow_target": Field("w.target", Kind.TEXT),
    "target": Field("w.target", Kind.TEXT),
    "assignee": Field("p.assignee", Kind.TEXT),
    "last_status": Field("p.last_status", Kind.TEXT, lowercase=True),
    "last_step": Field("p.last_step", Kind.TEXT),
    "started_at": Field("p.started_at", Kind.TIME),
    "last_modified_at": Field("p.last_modified_at", Kind.TIME),
    "failed_reason": Field("p.failed_reason", Kind.TEXT),
    "traceback": Field("p.traceback", Kind.TEXT),
    "created_by": Field("p.created_by", Kind.TEXT),
    "is_task": Field("p.is_task", Kind.BOOL),
    "note": Field("p.note", Kind.TEXT),
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


def _order_by(orders: Sequence[Order]) -> str:
    terms = []
    for order in orders:
        field = _field(order.field)
        direction = DIRECTIONS.get(order.direction.lower())
        if direction is None:
            raise QueryError(f"Unknown sort direction: {order.direction!r}")
        column = f"lower({field.column})" if field.kind is Kind.TEXT else field.column
        terms.append(f"{column} {direction}")
    return ", ".join([*terms, "p.pid"]) if terms else "p.started_at DESC, p.pid"


async def list_processes(
    pool: asyncpg.Pool,
    conditions: Sequence[Condition] = (),
    orders: Sequence[Order] = (),
    window: tuple[int, int] | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Processes matching every condition, in order; with `window=(start, end)` rows [start, end) and the total."""
    params = _Params()
    where = _where(conditions, params)
    sql = f"""SELECT {_PROCESS_COLUMNS} FROM processes p JOIN workflows w ON w.workflow_id = p.workflow_id
               WHERE {where} ORDER BY {_order_by(orders)}"""
    if window is None:
        rows = await pool.fetch(sql, *params.values)
        return [dict(r.items()) for r in rows], None
    start, end = window
    if not 0 <= start < end <= MAX_ROW:
        raise QueryError("Invalid range: need 0 <= start < end <= 2**62")
    # Every process has its workflow (a foreign key): without a condition on the workflow the count needs only
    # `processes`, which a status filter then counts from the status index alone.
    joined = "JOIN workflows w ON w.workflow_id = p.workflow_id " if "w." in where else ""
    source = f"FROM processes p {joined}WHERE {where}"
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total = await _total(conn, source, params.values)
        rows = await conn.fetch(f"{sql} OFFSET {params.add(start)} LIMIT {params.add(end - start)}", *params.values)
    return [dict(r.items()) for r in rows], total


EXACT_TOTAL_UP_TO = 10_000
"""A listing's total is counted exactly up to this many rows; above, it is the planner's estimate. An exact count
of a million rows takes hundreds of milliseconds on every page; the estimate, a plan."""


async def _total(conn: asyncpg.Connection, source: str, values: Sequence[Any]) -> int:
    """The number of rows of `source`: the planner's estimate first; a count (bounded) unless that is clearly
    above the exact limit."""
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 {source}", *values)
    if isinstance(plan, str):  # a connection without the pool's json codec
        plan = jsonutil.loads(plan)
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    if estimate > 2 * EXACT_TOTAL_UP_TO:
        return estimate
    bounded = f"SELECT count(*) FROM (SELECT 1 {source} LIMIT {EXACT_TOTAL_UP_TO + 1}) c"
    counted = int(await conn.fetchval(bounded, *values))
    return counted if counted <= EXACT_TOTAL_UP_TO else max(counted, estimate)


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
