"""`/api/processes`: orchestrator-core's paths, bodies and status codes, on the Python API (`services`)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http import listing
from orchestrator.http.auth import user_model, user_name
from orchestrator.http.context import context
from orchestrator.http.models import (
    CallbackPayload,
    Count,
    Created,
    FormIncompleteProblem,
    NotePatch,
    ProcessOut,
    ProgressPayload,
    ResumePages,
    StartPages,
    StatusCounts,
    ValidationProblem,
)
from orchestrator.http.params import (
    PROCESS_ID,
    REPORTER,
    WORKFLOW_KEY,
    is_json,
    json_body,
    path_uuid,
    text_body,
    unsupported_media_type,
)
from orchestrator.http.routing import Api, Body, Param, Reply, json_reply
from orchestrator.services import QueryError

api = Api("processes")

NOT_FOUND = Reply(404, "No such process")
NOT_A_PROCESS_ID = Reply(
    405,
    "Not a process id (a UUID): the URL is a workflow's, which only POST (start) takes",
    headers={"Allow": "The methods the URL takes"},
)
ENGINE_PAUSED = Reply(503, "The engine is paused")
FORM_INVALID = Reply(400, "A form page is not valid (`validation_errors`)", ValidationProblem)
FORM_INCOMPLETE = Reply(510, "The form needs another page (`form`: its JSON schema)", FormIncompleteProblem)
TOKEN = Param("token", "path", {"type": "string"}, "The callback token from the process state", required=True)
ETAG = "Weak validator of the listed rows"


@api.operation(
    "GET",
    "/api/processes",
    summary="List processes",
    params=[
        Param("filter", "query", {"type": "string"}, "field,value,... (see this operation's description)"),
        Param("sort", "query", {"type": "string"}, "field,asc|desc,..."),
        Param("range", "query", {"type": "string"}, "start,end: rows [start, end) (OFFSET paging, with a total)"),
        Param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT},
            "Keyset paging: rows per page, from the first (without `after`) or after the cursor; no total",
        ),
        Param(
            "after",
            "query",
            {"type": "string"},
            'Keyset paging: the cursor from the previous page\'s `Link: <...>; rel="next"`, with the same filter '
            "and sort; not with `range`",
        ),
        Param("If-None-Match", "header", {"type": "string"}, "An ETag of an earlier answer"),
    ],
    replies=[
        Reply(
            200,
            "Processes (without steps, state and form)",
            list[ProcessOut],
            headers={
                "ETag": ETAG,
                "Content-Range": "processes start-end/total, with `range`",
                "Link": 'With `range` or `limit`, when more rows follow: `<URL>; rel="next"`, the next page '
                "(keyset: `after` and `limit`)",
            },
        ),
        Reply(304, "Unchanged since the ETag in If-None-Match", headers={"ETag": ETAG}),
        Reply(400, "Invalid filter, sort, range, limit or cursor (or a cursor made for another filter or sort)"),
    ],
)
async def list_processes(request: Request) -> Response:
    """orchestrator-core's query language: `filter=lastStatus,completed-failed,isTask,false`,
    `sort=startedAt,desc`, `range=0,25`; see the module documentation of `orchestrator.http.listing`.

    Deep pages: `range` skips the rows before the page, so its cost grows with `start`. Follow the `Link` header's
    `rel="next"` instead (`after=<cursor>&limit=N`, same filter and sort): each page starts at the previous
    page's last row through the index, at the first page's cost. `limit=N` without `after` is a first page
    without the total."""
    ctx = context(request)
    await ctx.authorize(request, "read")
    query = request.query_params
    conditions = listing.parse_filter(query.get("filter"))
    orders = listing.parse_sort(query.get("sort"))
    limit = listing.parse_limit(query.get("limit"))
    cursor = query.get("after")
    if "range" in query and (cursor is not None or limit is not None):
        raise QueryError("range (offset paging) does not combine with after or limit (keyset paging)")
    after = listing.decode_cursor(cursor, conditions, orders) if cursor is not None else None
    keyset = limit is not None or after is not None
    window = (0, limit or listing.DEFAULT_LIMIT) if keyset else listing.parse_range(query.get("range"))
    result = await services.list_processes(
        conditions, orders, window, after=after, total=not keyset, orchestrator=ctx.orchestrator
    )
    tag = listing.etag(result.rows)
    headers = {"ETag": f'W/"{tag}"'}
    if listing.matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    if window is not None and result.total is not None:
        headers["Content-Range"] = f"processes {window[0]}-{window[1]}/{result.total}"
    if window is not None and result.next_position is not None:
        token = listing.encode_cursor(result.next_position, conditions, orders)
        kept = [(k, v) for k, v in query.multi_items() if k in ("filter", "sort")]
        size = min(window[1] - window[0], listing.MAX_LIMIT)
        headers["Link"] = f'<{request.url.path}?{urlencode([*kept, ("limit", size), ("after", token)])}>; rel="next"'
    return json_reply(list[ProcessOut], result.rows, headers=headers)


@api.operation(
    "GET",
    "/api/processes/status-counts",
    summary="Count processes and tasks by status",
    replies=[Reply(200, "Only statuses that occur", StatusCounts)],
)
async def status_counts(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    return json_reply(StatusCounts, await services.status_counts(orchestrator=ctx.orchestrator))


@api.operation(
    "PUT",
    "/api/processes/resume-all",
    summary="Retry every failed, waiting, api_unavailable and inconsistent_data task",
    params=[REPORTER],
    replies=[Reply(200, "How many tasks were found; they are retried in the background", Count), ENGINE_PAUSED],
)
async def resume_all(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "resume_all")
    count = await services.resume_all(user=user_name(request), orchestrator=ctx.orchestrator)
    return json_reply(Count, {"count": count})


@api.operation(
    "POST",
    "/api/processes/{workflow_key}",
    summary="Start a process",
    params=[WORKFLOW_KEY, REPORTER],
    body=Body(StartPages, "The initial form's pages, one object each (`[{}]` without a form)"),
    replies=[
        Reply(201, "Created and dispatched", Created),
        Reply(404, "No such workflow"),
        FORM_INVALID,
        Reply(412, "The workflow's run predicate refused the start"),
        FORM_INCOMPLETE,
        ENGINE_PAUSED,
    ],
)
async def start_process(request: Request) -> Response:
    """Form errors, a refused predicate and a paused engine write nothing."""
    ctx = context(request)
    key = request.path_params["workflow_key"]
    await ctx.authorize(request, "start", key)
    user = user_name(request)
    pages = await json_body(request, StartPages)
    pid = await services.start_process(
        key, pages, user=user, user_model=user_model(request), orchestrator=ctx.orchestrator
    )
    return json_reply(Created, {"id": pid}, status=201)


@api.operation(
    "GET",
    "/api/processes/{process_id}",
    summary="Get a process with its steps, current state and the form it waits on",
    params=[PROCESS_ID],
    replies=[Reply(200, "The process", ProcessOut), NOT_FOUND, NOT_A_PROCESS_ID],
)
async def get_process(request: Request) -> Response:
    """`steps` lists the executed step rows, then `{name, status: "pending"}` for each remaining step."""
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "read", str(pid))
    return json_reply(ProcessOut, await services.get_process(pid, orchestrator=ctx.orchestrator))


@api.operation(
    "PATCH",
    "/api/processes/{process_id}",
    summary="Change a process's note",
    params=[PROCESS_ID],
    body=Body(NotePatch, "The fields to change"),
    replies=[Reply(200, "The process", ProcessOut), NOT_FOUND, NOT_A_PROCESS_ID],
)
async def update_process(request: Request) -> Response:
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "update", str(pid))
    patch: NotePatch = await json_body(request, NotePatch)
    if "note" in patch.model_fields_set:
        await services.set_note(pid, patch.note, orchestrator=ctx.orchestrator)
    return json_reply(ProcessOut, await services.get_process(pid, orchestrator=ctx.orchestrator))


@api.operation(
    "DELETE",
    "/api/processes/{process_id}",
    summary="Delete a task's process",
    params=[PROCESS_ID],
    replies=[Reply(204, "Deleted"), Reply(400, "Not a task: only tasks can be deleted"), NOT_FOUND, NOT_A_PROCESS_ID],
)
async def delete_process(request: Request) -> Response:
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "delete", str(pid))
    await services.delete_process(pid, orchestrator=ctx.orchestrator)
    return Response(status_code=204)


@api.operation(
    "PUT",
    "/api/processes/{process_id}/resume",
    summary="Resume a suspended process with its form's pages, or retry a failed one",
    params=[PROCESS_ID, REPORTER],
    body=Body(ResumePages, "The waiting step's form pages (`[{}]` or `{}` to retry)"),
    replies=[
        Reply(204, "Resumed and dispatched"),
        FORM_INVALID,
        NOT_FOUND,
        Reply(409, "The process's status cannot be resumed"),
        FORM_INCOMPLETE,
        ENGINE_PAUSED,
    ],
)
async def resume_process(request: Request) -> Response:
    """The authorizer is asked for `retry` when the process failed (failed, waiting, api_unavailable,
    inconsistent_data) and for `resume` otherwise. Form errors write nothing."""
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    if not ctx.authorizes_everything:  # which action it is costs a read of the process: only for an authorizer
        await ctx.authorize(request, await services.resume_action(pid, orchestrator=ctx.orchestrator), str(pid))
    user = user_name(request)
    pages = await json_body(request, ResumePages)
    await services.resume_process(
        pid,
        pages if isinstance(pages, list) else [pages],
        user=user,
        user_model=user_model(request),
        orchestrator=ctx.orchestrator,
    )
    return Response(status_code=204)


@api.operation(
    "PUT",
    "/api/processes/{process_id}/abort",
    summary="Abort a process (a no-op once it is completed)",
    params=[PROCESS_ID, REPORTER],
    replies=[Reply(204, "Aborted"), NOT_FOUND],
)
async def abort_process(request: Request) -> Response:
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "abort", str(pid))
    await services.abort_process(pid, user=user_name(request), orchestrator=ctx.orchestrator)
    return Response(status_code=204)


CALLBACK_ERRORS = [
    Reply(404, "No such process, or an invalid token"),
    Reply(409, "The process is not awaiting a callback"),
    ENGINE_PAUSED,
]


@api.operation(
    "POST",
    "/api/processes/{process_id}/callback/{token}",
    summary="Deliver an external system's result to a process awaiting it, and continue the process",
    params=[PROCESS_ID, TOKEN],
    body=Body(CallbackPayload, "The result, stored in the state under the step's result key"),
    replies=[Reply(200, "Accepted", type(None)), *CALLBACK_ERRORS],
)
async def callback(request: Request) -> Response:
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "callback", str(pid))
    payload = await json_body(request, CallbackPayload)
    await services.continue_with_callback(pid, request.path_params["token"], payload, orchestrator=ctx.orchestrator)
    return json_reply(type(None), None)


@api.operation(
    "POST",
    "/api/processes/{process_id}/callback/{token}/progress",
    summary="Report progress of the external work a process is awaiting",
    params=[PROCESS_ID, TOKEN],
    body=Body(ProgressPayload, "A JSON object or string, or plain text", text=True),
    replies=[Reply(200, "Recorded", type(None)), *CALLBACK_ERRORS],
)
async def callback_progress(request: Request) -> Response:
    """Shown in the awaiting step's state as `callback_progress` until the next step."""
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "callback", str(pid))
    content_type = request.headers.get("content-type")
    if content_type is not None and content_type.lower().startswith("text/plain"):
        progress: object = await text_body(request)
    elif is_json(content_type):
        progress = await json_body(request, ProgressPayload)
    else:
        raise unsupported_media_type(content_type, "application/json or text/plain")
    await services.report_callback_progress(pid, request.path_params["token"], progress, orchestrator=ctx.orchestrator)
    return json_reply(type(None), None)
