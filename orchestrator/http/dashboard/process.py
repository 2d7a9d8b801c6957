"""`/processes/{id}`: one process (its steps as a timeline, its state, its failure, the form it waits on) and the
actions on it: resume with the form, retry, abort, delete, edit the note. Every action asks the app's authorizer
the same question the REST API asks, then calls the same Python API; it answers with a redirect to the page
(post/redirect/get), or the page again with the form's errors next to its fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator import services
from orchestrator.dsl.types import FAILED_STATUSES, RESUMABLE_STATUSES, ProcessStatus
from orchestrator.http.auth import Action, user_model, user_name
from orchestrator.http.context import AppContext, context
from orchestrator.http.dashboard.render import checked_form, html_errors, page
from orchestrator.http.dashboard.schemaform import RenderedForm, render_form, submit_form
from orchestrator.http.params import path_uuid
from orchestrator.http.problems import InvalidRequestError

NOTE_MAX_LENGTH = 5000
ENDED = frozenset({ProcessStatus.COMPLETED, ProcessStatus.ABORTED})
DONE_NOTICES = {
    "resumed": "Resumed.",
    "retried": "Retried from the failed step.",
    "aborted": "Aborted.",
    "note": "Note saved.",
    "started": "Started.",
}


def _moment(value: object) -> datetime | None:
    """A step's time: a datetime, or the ISO text its JSON row holds."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def timeline(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps with their duration and how many times each was tried before (a retried step logs one row per
    failed attempt)."""
    tries: dict[tuple[str, str | None], int] = {}
    shown = []
    for step in steps:
        key = (step["name"], step.get("branch"))
        started, completed = _moment(step.get("started")), _moment(step.get("completed"))
        duration = (completed - started).total_seconds() if started and completed else None
        times = {"started": started, "completed": completed, "duration": duration}
        shown.append({**step, **times, "tries": tries.get(key, 0)})
        if step["status"] in ("failed", "waiting"):
            tries[key] = tries.get(key, 0) + 1
    return shown


async def _process(request: Request) -> tuple[UUID, dict[str, Any]]:
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, "read", str(pid))
    return pid, await services.get_process(pid, orchestrator=ctx.orchestrator)


def _context(process: dict[str, Any], form: RenderedForm | None = None) -> dict[str, Any]:
    status = process["last_status"]
    if form is None and status == ProcessStatus.SUSPENDED:
        form = render_form(process["form"])
    return {
        "p": process,
        "steps": timeline(process["steps"]),
        "form": form,
        "can_resume": status == ProcessStatus.SUSPENDED,
        "can_retry": status in FAILED_STATUSES,
        "can_abort": status not in ENDED,
        "can_delete": process["is_task"],
        "resumable": status in RESUMABLE_STATUSES,
    }


@html_errors
async def process_page(request: Request) -> Response:
    _, process = await _process(request)
    notice = DONE_NOTICES.get(request.query_params.get("done", ""))
    return page(request, "process.html", {**_context(process), "notice": notice})


@html_errors
async def process_fragment(request: Request) -> Response:
    """The parts of the page that live updates refresh (everything but the forms a person may be filling in)."""
    _, process = await _process(request)
    return page(request, "_process_live.html", _context(process))


def _back(pid: UUID, done: str) -> Response:
    return RedirectResponse(f"/processes/{pid}?{urlencode({'done': done})}", 303)


@html_errors
async def resume(request: Request) -> Response:
    """Resume a suspended process with its form's pages, or retry a failed one (the form is then empty)."""
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    action = await services.resume_action(pid, orchestrator=ctx.orchestrator)
    await ctx.authorize(request, action, str(pid))

    async def submit(pages: list[dict[str, Any]]) -> None:
        await services.resume_process(
            pid, pages, user=user_name(request), user_model=user_model(request), orchestrator=ctx.orchestrator
        )

    form = await submit_form(request, submit)
    if form is None:
        return _back(pid, "retried" if action == "retry" else "resumed")
    process = await services.get_process(pid, orchestrator=ctx.orchestrator)
    return page(request, "process.html", _context(process, form), form.status)


async def _action(request: Request, action: Action) -> tuple[AppContext, UUID, FormData]:
    """The process an action is on, once the authorizer allowed it and the form passed the CSRF check."""
    ctx = context(request)
    pid = path_uuid(request, "process_id")
    await ctx.authorize(request, action, str(pid))
    return ctx, pid, await checked_form(request)


@html_errors
async def abort(request: Request) -> Response:
    ctx, pid, _ = await _action(request, "abort")
    await services.abort_process(pid, user=user_name(request), orchestrator=ctx.orchestrator)
    return _back(pid, "aborted")


@html_errors
async def delete(request: Request) -> Response:
    ctx, pid, _ = await _action(request, "delete")
    await services.delete_process(pid, orchestrator=ctx.orchestrator)
    return RedirectResponse("/?" + urlencode({"notice": "deleted"}), 303)


@html_errors
async def edit_note(request: Request) -> Response:
    ctx, pid, form = await _action(request, "update")
    note = str(form.get("note", "")).strip()
    if len(note) > NOTE_MAX_LENGTH:
        raise InvalidRequestError.at(
            "form", "note", msg=f"A note has at most {NOTE_MAX_LENGTH} characters", kind="string_too_long"
        )
    await services.set_note(pid, note or None, orchestrator=ctx.orchestrator)
    return _back(pid, "note")
