"""`/workflows`: the workflows, and `/workflows/{key}`: start one, with its initial form rendered like a resume
form (the form's first page comes from a start with no pages, which pydantic-forms answers with the page it
needs, writing nothing)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator import services
from orchestrator.dsl.forms import FormNotCompleteError
from orchestrator.http.auth import user_model, user_name
from orchestrator.http.context import context
from orchestrator.http.dashboard.render import html_errors, page
from orchestrator.http.dashboard.schemaform import RenderedForm, render_form, submit_form


@html_errors
async def workflow_list(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    workflows = await services.list_workflows(orchestrator=ctx.orchestrator)
    return page(request, "workflows.html", {"workflows": workflows})


def _starter(request: Request, key: str, started: list[UUID]) -> Any:
    ctx = context(request)

    async def start(pages: list[dict[str, Any]]) -> None:
        pid = await services.start_process(
            key, pages, user=user_name(request), user_model=user_model(request), orchestrator=ctx.orchestrator
        )
        started.append(pid)

    return start


def _start_page(request: Request, key: str, form: RenderedForm, status: int = 200) -> Response:
    return page(request, "start.html", {"key": key, "form": form}, status)


@html_errors
async def start_form(request: Request) -> Response:
    key = request.path_params["workflow_key"]
    await context(request).authorize(request, "start", key)
    started: list[UUID] = []
    try:
        await _starter(request, key, started)([])
    except FormNotCompleteError as exc:
        return _start_page(request, key, render_form(exc.form))
    raise RuntimeError("a start with no form pages went through")  # pydantic-forms always asks for a page


@html_errors
async def start(request: Request) -> Response:
    key = request.path_params["workflow_key"]
    await context(request).authorize(request, "start", key)
    started: list[UUID] = []
    form = await submit_form(request, _starter(request, key, started))
    if form is None:
        return RedirectResponse(f"/processes/{started[0]}?done=started", 303)
    return _start_page(request, key, form, form.status)
