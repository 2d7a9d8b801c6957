"""`/engine`: the engine's status with pause and unpause, the workers and queues their heartbeats report; and
`/schedules`: the schedules with their next and last run."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator import services
from orchestrator.http.context import context
from orchestrator.http.dashboard.render import checked_form, html_errors, page


@html_errors
async def engine_page(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    orch = ctx.orchestrator
    return page(
        request,
        "engine.html",
        {
            "engine": await services.engine_status(orchestrator=orch),
            "workers": await services.worker_status(orchestrator=orch),
            "queues": await services.queue_status(orch),
            "notice": {"paused": "Engine paused.", "unpaused": "Engine unpaused."}.get(
                request.query_params.get("done", "")
            ),
        },
    )


@html_errors
async def set_engine(request: Request) -> Response:
    """Pause (`pause=true`) or unpause the engine."""
    ctx = context(request)
    await ctx.authorize(request, "engine")
    form = await checked_form(request)
    pause = form.get("pause") == "true"
    await services.set_engine_lock(pause, orchestrator=ctx.orchestrator)
    return RedirectResponse(f"/engine?done={'paused' if pause else 'unpaused'}", 303)


@html_errors
async def schedule_list(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    schedules = await services.list_schedules(orchestrator=ctx.orchestrator)
    return page(request, "schedules.html", {"schedules": schedules})
