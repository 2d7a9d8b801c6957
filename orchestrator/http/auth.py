"""Who may do what over HTTP.

Three layers, outermost first:
- `API_TOKEN`: when set, every request but the health check, the login page and the dashboard's static files
  needs `Authorization: Bearer <token>` (a websocket may offer it as `Sec-WebSocket-Protocol: base64.bearer.token,
  <token>` or `?token=`, as browsers cannot set headers on websockets), or the dashboard's session cookie
  (`sessions.py`), which the API accepts for reads and same-origin websockets only: its state-changing requests
  carry no CSRF token, the dashboard's own forms do;
- the app's `RequestAuthorizer`: given the connection, an action and the workflow key or process id it concerns,
  yes or no (default: yes);
- the workflow's and steps' own `Authorizer` callbacks (`authorize_callback`, ...), which the Python API applies to
  the request's user model.

The user model is `scope["user"]`, set by whatever authentication middleware the deployment wraps around the app
(Starlette's `AuthenticationMiddleware`, an OIDC middleware, ...); its name is the reporter unless `?reporter=`
overrides it.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.dsl import jsonutil
from orchestrator.dsl.types import SYSTEM_USER
from orchestrator.http.problems import InvalidRequestError, Problem
from orchestrator.http.sessions import SESSION_COOKIE, valid_session

Action = Literal["read", "start", "resume", "retry", "abort", "delete", "update", "callback", "resume_all", "engine"]

WS_AUTH_SUBPROTOCOL = "base64.bearer.token"
REPORTER_MAX_LENGTH = 100
PUBLIC_PATHS = frozenset({"/api/health", "/login"})
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOGIN_PATH = "/login"


class RequestAuthorizer(Protocol):
    async def __call__(self, conn: HTTPConnection, action: Action, resource: str | None) -> bool:
        """May this connection do `action` on `resource` (a workflow key or a process id; None for collections)?"""


async def allow_all(conn: HTTPConnection, action: Action, resource: str | None) -> bool:
    return True


def user_model(conn: HTTPConnection) -> Any:
    return conn.scope.get("user")


def user_name(conn: HTTPConnection) -> str:
    """`?reporter=` if given (at most 100 characters), else the user model's name, else SYSTEM."""
    reporter = conn.query_params.get("reporter")
    if reporter is not None:
        if len(reporter) > REPORTER_MAX_LENGTH:
            raise InvalidRequestError.at(
                "query",
                "reporter",
                msg=f"String should have at most {REPORTER_MAX_LENGTH} characters",
                kind="string_too_long",
                input=reporter,
            )
        return reporter
    user = user_model(conn)
    if getattr(user, "is_authenticated", False):
        return str(user.display_name)
    if isinstance(user, dict):
        return str(user.get("name") or user.get("user_name") or SYSTEM_USER)
    return SYSTEM_USER


def websocket_token(scope: Scope) -> tuple[bool, str | None]:
    """(well formed, token) from the offered subprotocols or the `token` query parameter."""
    offered = list(scope.get("subprotocols") or ())
    if offered:
        if len(offered) == 2 and offered[0] == WS_AUTH_SUBPROTOCOL:
            return True, offered[1]
        return False, None
    return True, HTTPConnection(scope).query_params.get("token")


async def reject_websocket(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """orchestrator-core's refusal: accept (with the auth subprotocol if offered), send the error, close 1008."""
    await receive()
    subprotocol = WS_AUTH_SUBPROTOCOL if scope.get("subprotocols") else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": []})
    error = {"error": {"status_code": status, "detail": detail, "headers": None}}
    await send({"type": "websocket.send", "text": jsonutil.dumps_str(error)})
    await send({"type": "websocket.close", "code": 1008, "reason": ""})


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def same_origin(conn: HTTPConnection) -> bool:
    """The browser's `Origin` names this host (a page of another site cannot open our websocket with our cookie)."""
    origin = conn.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc == conn.headers.get("host")


class BearerTokenMiddleware:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.secret = token
        self.token = token.encode()

    def _matches(self, offered: str | None) -> bool:
        return offered is not None and secrets.compare_digest(offered.encode(), self.token)

    def _session(self, conn: HTTPConnection) -> bool:
        return valid_session(self.secret, conn.cookies.get(SESSION_COOKIE))

    @staticmethod
    def _browser_page(conn: HTTPConnection) -> bool:
        """A browser asking for a page (not the API, not a scraper of `/metrics`): it is sent to the login page."""
        path = conn.url.path
        wants_html = "text/html" in conn.headers.get("accept", "")
        return wants_html and not path.startswith("/api") and conn.scope["method"] in SAFE_METHODS

    def _http_allowed(self, conn: HTTPConnection) -> bool:
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            return True
        api = conn.url.path.startswith("/api")
        return (not api or conn.scope["method"] in SAFE_METHODS) and self._session(conn)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope["path"]):
            conn = HTTPConnection(scope)
            if not self._http_allowed(conn):
                if self._browser_page(conn):
                    target = quote(conn.url.path + (f"?{conn.url.query}" if conn.url.query else ""), safe="")
                    await RedirectResponse(f"{LOGIN_PATH}?next={target}", 303)(scope, receive, send)
                    return
                problem = Problem(401, "A valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
                await problem(scope, receive, send)
                return
        elif scope["type"] == "websocket":
            well_formed, offered = websocket_token(scope)
            if not well_formed:
                await receive()
                await send({"type": "websocket.close", "code": 1002, "reason": ""})
                return
            conn = HTTPConnection(scope)
            if not self._matches(offered) and not (same_origin(conn) and self._session(conn)):
                await reject_websocket(scope, receive, send, 401, "A valid bearer token is required")
                return
        await self.app(scope, receive, send)
