"""`/login` and `/logout`: with `API_TOKEN` set, a person types the token once and gets a session cookie
(`orchestrator.http.sessions`): HttpOnly (no script can read it), SameSite=strict (no other site's page sends it)."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from orchestrator.http.context import context
from orchestrator.http.dashboard.render import checked_form, html_errors, page
from orchestrator.http.sessions import SESSION_COOKIE, SESSION_SECONDS, new_session


def _local(target: str | None) -> str:
    """Only a path of this site: a login link must not send the person elsewhere afterwards."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@html_errors
async def login_page(request: Request) -> Response:
    if context(request).settings.API_TOKEN is None:
        return RedirectResponse("/", 303)
    return page(request, "login.html", {"next": _local(request.query_params.get("next")), "error": None})


@html_errors
async def login(request: Request) -> Response:
    token = context(request).settings.API_TOKEN
    if token is None:
        return RedirectResponse("/", 303)
    form = await checked_form(request)
    target = _local(str(form.get("next", "")))
    offered = str(form.get("token", ""))
    if not secrets.compare_digest(offered.encode(), token.get_secret_value().encode()):
        return page(request, "login.html", {"next": target, "error": "That is not the API token."}, 400)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        SESSION_COOKIE,
        new_session(token.get_secret_value()),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@html_errors
async def logout(request: Request) -> Response:
    await checked_form(request)
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response
