"""One page of the process list for people (the dashboard): keyset paging along an index, no total count.

A page is read along `ix_processes_started_at` (migration 0006) in start order, the filters using the
status and workflow indexes where they match rarely, so a page reads about as many rows as it shows at any
table size and any depth: the next page starts after the last row's (started_at, pid) instead of at an OFFSET.
A text search matches a note (trigram index), a workflow name (the small workflows table) or an id prefix (a range
of the primary key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

MAX_PAGE_SIZE = 500
_COLUMNS = """
    p.pid AS process_id, w.name AS workflow_name, w.target AS workflow_target, p.is_task, p.created_by,
    p.started_at, p.last_modified_at, p.last_status, p.last_step, p.assignee, p.note
"""
"""What a list row shows: no traceback or state, which can be large."""
MAX_WORKFLOW_BRANCHES = 20
MIN_NOTE_SEARCH = 3
"""Notes are searched for texts of 3 characters or more: a trigram index cannot narrow a shorter one, and a
walk of every row would make the page as slow as the table is large."""
_ID_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")


@dataclass(frozen=True)
class PageQuery:
    statuses: tuple[str, ...] = ()
    workflow: str | None = None
    is_task: bool | None = None
    search: str = ""
    descending: bool = True
    """Newest first (by start)."""
    after: tuple[datetime, UUID] | None = None
    """The (started_at, pid) of the previous page's last row."""
    size: int = 50


def id_range(text: str) -> tuple[UUID, UUID] | None:
    """The ids that start with `text` (hex digits, dashes anywhere), as an inclusive range; None if not an id."""
    text = text.lower()
    if not _ID_PREFIX.match(text):
        return None
    digits = text.replace("-", "")
    if len(digits) > 32:
        return None
    return UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))


@dataclass(frozen=True)
class SortKey:
    """One term of an ORDER BY: a whitelisted SQL expression, its direction and whether it may be NULL."""

    expression: str
    descending: bool = False
    nullable: bool = False


def keyset_after(keys: Sequence[SortKey], values: Sequence[Any], param: Callable[[Any], str]) -> str:
    """The condition "after the row whose sort keys are `values`" in the order `keys` give (PostgreSQL's: NULLs
    last ascending, first descending; the last key unique, so that no two rows tie). Nested from the first key,
    `k1 >= v1 AND (k1 > v1 OR (k1 = v1 AND (k2 > v2 OR ...)))`, so that an index on the first key starts at the
    position instead of reading the rows before it: a page after any position costs what the first page costs.
    The bound on the first key is only added when it cannot be NULL."""
    if len(keys) != len(values):
        raise ValueError("one value per sort key")
    clause = ""
    for key, value in reversed(list(zip(keys, values, strict=True))):
        beyond, equal = _compare(key, value, param)
        clause = beyond if not clause else f"({beyond} OR ({equal} AND {clause}))"
    first, value = keys[0], values[0]
    if first.nullable or value is None:
        return clause
    return f"{first.expression} {'<' if first.descending else '>'}= {param(value)} AND {clause}"


def _compare(key: SortKey, value: Any, param: Callable[[Any], str]) -> tuple[str, str]:
    """(the rows strictly beyond `value` on this key, the rows equal to it), NULLs placed as PostgreSQL sorts."""
    column = key.expression
    if value is None:
        return (f"{column} IS NOT NULL" if key.descending else "false"), f"{column} IS NULL"
    placeholder = param(value)
    beyond = f"{column} {'<' if key.descending else '>'} {placeholder}"
    if key.nullable and not key.descending:
        beyond = f"({beyond} OR {column} IS NULL)"
    return beyond, f"{column} = {placeholder}"


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class _Where:
    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.values: list[Any] = []

    def param(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _search_terms(where: _Where, text: str, workflow_ids: list[UUID]) -> list[str]:
    """One condition per place a text may be found; each is searched on its own (see `process_page`). A few
    matching workflows are one condition each, so that each reads its own stretch of the workflow index."""
    like = where.param(_like(text))
    if len(workflow_ids) > MAX_WORKFLOW_BRANCHES:
        terms = [f"p.workflow_id = ANY({where.param(workflow_ids)}::uuid[])"]
    else:
        terms = [f"p.workflow_id = {where.param(workflow_id)}" for workflow_id in workflow_ids]
    if len(text) >= MIN_NOTE_SEARCH:
        terms.append(f"p.note ILIKE {like}")
    ids = id_range(text)
    if ids is not None:
        terms.append(f"p.pid BETWEEN {where.param(ids[0])} AND {where.param(ids[1])}")
    return terms


async def process_page(pool: asyncpg.Pool, query: PageQuery) -> tuple[list[dict[str, Any]], bool]:
    """The page's rows and whether more follow.

    A search is a UNION of one bounded query per place the text may be found (each matching workflow, notes, ids),
    each taking the page's first rows from its own index, instead of one OR that PostgreSQL can only apply as a
    filter while it walks the whole list in order, which reads every row when few match."""
    column = "p.started_at"
    where = _Where()
    if query.statuses:
        where.clauses.append(f"p.last_status = ANY({where.param(list(query.statuses))}::text[])")
    if query.workflow:
        name = where.param(query.workflow)
        where.clauses.append(f"p.workflow_id = (SELECT workflow_id FROM workflows WHERE name = {name})")
    if query.is_task is not None:
        where.clauses.append(f"p.is_task = {where.param(query.is_task)}")
    if query.after is not None:
        keys = (SortKey(column, query.descending), SortKey("p.pid", not query.descending))
        where.clauses.append(keyset_after(keys, query.after, where.param))
    order = f"{column} DESC, p.pid ASC" if query.descending else f"{column} ASC, p.pid DESC"
    limit = max(1, min(query.size, MAX_PAGE_SIZE)) + 1
    source = "processes p"
    if query.search:
        workflow_ids = [
            r["workflow_id"]
            for r in await pool.fetch("SELECT workflow_id FROM workflows WHERE name ILIKE $1", _like(query.search))
        ]
        branches = [
            f"SELECT p.pid FROM processes p WHERE {' AND '.join([*where.clauses, term])} ORDER BY {order} LIMIT {limit}"
            for term in _search_terms(where, query.search, workflow_ids)
        ]
        if not branches:
            return [], False
        union = " UNION ".join(f"({branch})" for branch in branches)
        source = f"({union}) hit JOIN processes p ON p.pid = hit.pid"
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM {source} JOIN workflows w ON w.workflow_id = p.workflow_id
             WHERE {" AND ".join(where.clauses) or "true"} ORDER BY {order} LIMIT {limit}""",
        *where.values,
    )
    return [dict(r.items()) for r in rows[: limit - 1]], len(rows) == limit
