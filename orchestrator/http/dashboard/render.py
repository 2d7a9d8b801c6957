"""Rendering the dashboard's pages: the Jinja2 templates (autoescaped: every value is shown as text), the CSRF
token every form carries, the security headers of every page, and errors as pages instead of JSON problems.

CSRF: a random token in an HttpOnly, SameSite=strict cookie, repeated in each form (field `csrf`) or, for htmx
requests, in the `X-CSRF-Token` header (read from the page's meta tag); a state-changing request must carry both,
equal, and come from this origin. This holds with or without `API_TOKEN`: a page of another site cannot make a
browser abort processes on an open dashboard.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.dsl import jsonutil
from orchestrator.dsl.forms import FormOverflowError
from orchestrator.exceptions import OrchestratorError
from orchestrator.http.auth import same_origin
from orchestrator.http.problems import STATUS_OF, InvalidRequestError
from orchestrator.http.sessions import SESSION_COOKIE
from orchestrator.services import QueryError

HERE = Path(__file__).resolve().parent
CSRF_COOKIE = "orchestrator_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}

templates = Jinja2Templates(directory=HERE / "templates")


def _utc(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _pretty(value: Any) -> str:
    return json.dumps(jsonutil.loads(jsonutil.dumps(value)), indent=2, ensure_ascii=False)


templates.env.filters["utc"] = _utc
templates.env.filters["pretty"] = _pretty


class SecurityHeadersMiddleware:
    """The Content-Security-Policy (no inline script or style) and friends on every response outside `/api`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csrf_token(request: Request) -> str:
    """This browser's token (a new one, set on the response by `page`, when it has none)."""
    token = request.cookies.get(CSRF_COOKIE) or request.scope.get("dashboard.csrf")
    if not token:
        token = secrets.token_urlsafe(24)
        request.scope["dashboard.csrf"] = token
    return str(token)


def _set_csrf_cookie(request: Request, response: Response) -> None:
    if CSRF_COOKIE not in request.cookies:
        response.set_cookie(
            CSRF_COOKIE, csrf_token(request), httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )


class CsrfError(Exception):
    """A state-changing request without this browser's CSRF token, or from another origin."""


MAX_FORM_FIELDS = 1000


def _bad_form(message: str) -> InvalidRequestError:
    return InvalidRequestError.at("body", msg=message, kind="form_invalid")


async def _urlencoded(request: Request) -> FormData:
    """The dashboard's forms are urlencoded (no file uploads), which needs no multipart parser."""
    if request.headers.get("content-type", "").partition(";")[0].strip() != "application/x-www-form-urlencoded":
        raise _bad_form("Expected a form (application/x-www-form-urlencoded)")
    try:
        text = (await request.body()).decode()
        pairs: list[tuple[str, str | UploadFile]] = [
            *parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        ]
    except UnicodeDecodeError:
        raise _bad_form("The form is not UTF-8") from None
    except ValueError:
        raise _bad_form(f"A form has at most {MAX_FORM_FIELDS} fields") from None
    return FormData(pairs)


async def checked_form(request: Request) -> FormData:
    """The submitted form, after the CSRF check (same origin, token in form or header equal to the cookie)."""
    form = await _urlencoded(request)
    cookie = request.cookies.get(CSRF_COOKIE)
    offered = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    origin_ok = "origin" not in request.headers or same_origin(request)
    if not cookie or not isinstance(offered, str) or not origin_ok:
        raise CsrfError
    if not secrets.compare_digest(cookie.encode(), offered.encode()):
        raise CsrfError
    return form


def page(request: Request, name: str, context: Mapping[str, Any], status: int = 200) -> Response:
    """Render a template with what every page needs (the request, the CSRF token, the navigation)."""
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf": csrf_token(request),
            "path": request.url.path,
            "logged_in": SESSION_COOKIE in request.cookies,
            **context,
        },
        status_code=status,
    )
    _set_csrf_cookie(request, response)
    return response


Handler = Callable[[Request], Awaitable[Response]]


def html_errors(handler: Handler) -> Handler:
    """Errors as a page (with the status the API would give them), never a JSON problem or a traceback."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except CsrfError:
            message = "The form was stale or came from another site; reload the page and try again."
            return page(request, "error.html", {"status": 403, "message": message}, 403)
        except QueryError as exc:
            return page(request, "error.html", {"status": 400, "message": str(exc)}, 400)
        except InvalidRequestError as exc:
            message = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors)
            return page(request, "error.html", {"status": 422, "message": message}, 422)
        except FormOverflowError:
            message = "The form's pages did not match what it asks now; open it again and start over."
            return page(request, "error.html", {"status": 400, "message": message}, 400)
        except OrchestratorError as exc:
            status = next((STATUS_OF[c] for c in type(exc).__mro__ if c in STATUS_OF), None)
            if status is None:
                raise
            return page(request, "error.html", {"status": status, "message": str(exc)}, status)

    return wrapped
