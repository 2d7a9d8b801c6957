"""The built-in web dashboard, served by the API's own app (same authorizer, same Python API calls): pages
rendered on the server from Jinja2 templates, partial updates and live refresh with the vendored htmx and one
small script, no inline script (the Content-Security-Policy forbids it), no build step."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from orchestrator.http.dashboard import engine, listing, login, process, workflows
from orchestrator.http.dashboard.render import HERE, SecurityHeadersMiddleware

__all__ = ["SecurityHeadersMiddleware", "routes"]


def routes() -> list[BaseRoute]:
    return [
        Route("/", listing.process_list, methods=["GET"]),
        Route("/processes/{process_id}", process.process_page, methods=["GET"]),
        Route("/processes/{process_id}/live", process.process_fragment, methods=["GET"]),
        Route("/processes/{process_id}/resume", process.resume, methods=["POST"]),
        Route("/processes/{process_id}/abort", process.abort, methods=["POST"]),
        Route("/processes/{process_id}/delete", process.delete, methods=["POST"]),
        Route("/processes/{process_id}/note", process.edit_note, methods=["POST"]),
        Route("/workflows", workflows.workflow_list, methods=["GET"]),
        Route("/workflows/{workflow_key}", workflows.start_form, methods=["GET"]),
        Route("/workflows/{workflow_key}", workflows.start, methods=["POST"]),
        Route("/engine", engine.engine_page, methods=["GET"]),
        Route("/engine", engine.set_engine, methods=["POST"]),
        Route("/schedules", engine.schedule_list, methods=["GET"]),
        Route("/login", login.login_page, methods=["GET"]),
        Route("/login", login.login, methods=["POST"]),
        Route("/logout", login.logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
