"""`/`: the process list, with filters, order and keyset paging in the query string (so a view can be bookmarked
and shared). Asked by htmx for `#process-rows`, it answers the rows alone, which are swapped in when a filter
changes, a page is turned or the event stream says a process changed."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.dsl.types import ProcessStatus
from orchestrator.http.context import context
from orchestrator.http.dashboard.render import html_errors, page
from orchestrator.services import PageQuery, QueryError

PAGE_SIZES = (25, 50, 100, 200)
KINDS = {"": None, "workflow": False, "task": True}
STATUSES = [s.value for s in ProcessStatus]


def _cursor(text: str) -> tuple[datetime, UUID]:
    moment, _, pid = text.rpartition("|")
    try:
        return datetime.fromisoformat(moment), UUID(pid)
    except ValueError:
        raise QueryError("Invalid page position (after=); start again from the first page") from None


def parse_query(params: QueryParams) -> PageQuery:
    """The page the query string asks for; QueryError names what does not fit."""
    statuses = tuple(s for s in params.getlist("status") if s)
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise QueryError(f"Unknown status {unknown[0]!r}")
    kind = params.get("kind", "")
    if kind not in KINDS:
        raise QueryError("kind must be workflow or task")
    direction = params.get("dir", "desc")
    if direction not in ("asc", "desc"):
        raise QueryError("dir must be asc or desc")
    try:
        size = int(params.get("size", "50"))
    except ValueError:
        raise QueryError("size must be a number") from None
    if size not in PAGE_SIZES:
        raise QueryError(f"size must be one of {', '.join(map(str, PAGE_SIZES))}")
    after = params.get("after")
    return PageQuery(
        statuses=statuses,
        workflow=params.get("workflow") or None,
        is_task=KINDS[kind],
        search=params.get("q", "").strip()[:200],
        descending=direction == "desc",
        after=_cursor(after) if after else None,
        size=size,
    )


def _next_link(params: QueryParams, query: PageQuery, rows: list[dict[str, Any]]) -> str:
    last = rows[-1]
    kept = [(k, v) for k, v in params.multi_items() if k != "after"]
    return "?" + urlencode([*kept, ("after", f"{last['started_at'].isoformat()}|{last['process_id']}")])


async def _rows_context(request: Request) -> dict[str, Any]:
    ctx = context(request)
    await ctx.authorize(request, "read")
    query = parse_query(request.query_params)
    rows, more = await services.process_page(query, orchestrator=ctx.orchestrator)
    first_page = "?" + urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "after"])
    return {
        "rows": rows,
        "query": query,
        "next_link": _next_link(request.query_params, query, rows) if more else None,
        "first_link": first_page if query.after is not None else None,
    }


ROWS_TARGET = "process-rows"


@html_errors
async def process_list(request: Request) -> Response:
    ctx = context(request)
    rows = await _rows_context(request)
    if request.headers.get("hx-target") == ROWS_TARGET:
        response = page(request, "_process_rows.html", rows)
        response.headers["vary"] = "HX-Target"
        return response
    workflows = await services.list_workflows(orchestrator=ctx.orchestrator)
    response = page(
        request,
        "processes.html",
        {
            **rows,
            "statuses": STATUSES,
            "workflows": [w["name"] for w in workflows],
            "page_sizes": PAGE_SIZES,
            "notice": "Deleted." if request.query_params.get("notice") == "deleted" else None,
        },
    )
    response.headers["vary"] = "HX-Target"
    return response
