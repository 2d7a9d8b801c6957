"""What every endpoint of one app shares: its settings, authorizer, Orchestrator and event hub.

It lives in `app.state.context`; `context(request)` gives it back typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from starlette.requests import HTTPConnection

from orchestrator.exceptions import NotAuthorizedError
from orchestrator.http.auth import Action, RequestAuthorizer, allow_all
from orchestrator.http.hub import EventHub
from orchestrator.http.routing import Operation
from orchestrator.services import Orchestrator
from orchestrator.settings import AppSettings


@dataclass
class AppContext:
    settings: AppSettings
    authorizer: RequestAuthorizer
    operations: list[Operation]
    given: Orchestrator | None
    """An Orchestrator opened by the caller (tests, embedding programs); the app neither opens nor closes it."""
    opened: Orchestrator | None = None
    hub: EventHub | None = None
    openapi: dict[str, object] = field(default_factory=dict)

    @property
    def orchestrator(self) -> Orchestrator:
        orch = self.given or self.opened
        if orch is None:
            raise RuntimeError("The app is not started (its lifespan has not run)")
        return orch

    @property
    def events(self) -> EventHub:
        if self.hub is None:
            raise RuntimeError("The app is not started (its lifespan has not run)")
        return self.hub

    @property
    def authorizes_everything(self) -> bool:
        """No authorizer of the app's own: a question that only it would ask need not be prepared."""
        return self.authorizer is allow_all

    async def authorize(self, conn: HTTPConnection, action: Action, resource: str | None = None) -> None:
        if not await self.authorizer(conn, action, resource):
            target = f" {resource}" if resource else ""
            raise NotAuthorizedError(f"User is not authorized to {action.replace('_', ' ')}{target}")


def context(conn: HTTPConnection) -> AppContext:
    return cast(AppContext, conn.app.state.context)
