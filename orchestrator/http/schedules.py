"""`/api/schedules`: orchestrator-core 5.x's payloads (`POST`/`PUT`/`DELETE /api/schedules/`), plus listing.

Creating, changing or deleting a schedule needs the right to start its workflow (the `start` action on the
workflow's key, and its authorize callback). A bad trigger is a 422 problem, an unknown workflow or schedule 404.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http.auth import user_model
from orchestrator.http.context import context
from orchestrator.http.models import Epoch, JSONObject
from orchestrator.http.params import json_body, path_uuid
from orchestrator.http.routing import Api, Body, Param, Reply, json_reply

api = Api("schedules")

Trigger = Literal["interval", "cron", "date"]


def _one_empty_page() -> list[JSONObject]:
    return [{}]


class ScheduleCreate(BaseModel):
    """orchestrator-core's `APSchedulerJobCreate` (`workflow_id` optional here), plus `no_uncompleted_instance`."""

    workflow_name: str = Field(min_length=1, max_length=255)
    workflow_id: UUID | None = None
    name: str | None = Field(default=None, max_length=255)
    trigger: Trigger
    trigger_kwargs: JSONObject = Field(default_factory=dict, examples=[{"hours": 12}, {"minute": "*/5"}])
    user_inputs: list[JSONObject] = Field(default_factory=_one_empty_page)
    no_uncompleted_instance: bool = False
    """Skip a tick while the process of the previous tick has not finished."""
    scheduled_type: Literal["create"] | None = None


class ScheduleUpdate(BaseModel):
    """orchestrator-core's `APSchedulerJobUpdate`."""

    schedule_id: UUID
    name: str | None = Field(default=None, max_length=255)
    trigger: Trigger | None = None
    trigger_kwargs: JSONObject | None = None
    scheduled_type: Literal["update"] | None = None


class ScheduleDelete(BaseModel):
    """orchestrator-core's `APSchedulerJobDelete`."""

    schedule_id: UUID
    workflow_id: UUID | None = None
    scheduled_type: Literal["delete"] | None = None


class ScheduleOut(BaseModel):
    schedule_id: UUID
    name: str
    workflow_name: str
    workflow_id: UUID
    is_task: bool
    trigger: str
    trigger_kwargs: JSONObject
    user_inputs: list[JSONObject]
    no_uncompleted_instance: bool
    source: str
    """`api` (REST, CLI) or `code` (declared with its workflow)."""
    next_run_at: Epoch | None
    last_run_at: Epoch | None
    last_pid: UUID | None
    """The process the last tick started."""
    created_at: Epoch


SCHEDULE_ID = Param("schedule_id", "path", {"type": "string", "format": "uuid"}, "The schedule id", required=True)
INVALID = Reply(422, "The body does not fit, or the trigger is not valid")
NOT_FOUND = Reply(404, "No such schedule or workflow")


async def _authorize_start(request: Request, workflow_name: str) -> None:
    await context(request).authorize(request, "start", workflow_name)


@api.operation(
    "GET", "/api/schedules", summary="List schedules", replies=[Reply(200, "Every schedule", list[ScheduleOut])]
)
async def list_schedules(request: Request) -> Response:
    """With each one's next and last run."""
    ctx = context(request)
    await ctx.authorize(request, "read")
    return json_reply(list[ScheduleOut], await services.list_schedules(orchestrator=ctx.orchestrator))


@api.operation(
    "GET",
    "/api/schedules/{schedule_id}",
    summary="Get a schedule",
    params=[SCHEDULE_ID],
    replies=[Reply(200, "The schedule", ScheduleOut), NOT_FOUND],
)
async def get_schedule(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    schedule_id = path_uuid(request, "schedule_id")
    return json_reply(ScheduleOut, await services.get_schedule(schedule_id, orchestrator=ctx.orchestrator))


@api.operation(
    "POST",
    "/api/schedules/",
    summary="Create a schedule",
    body=Body(ScheduleCreate, "orchestrator-core's APSchedulerJobCreate"),
    replies=[Reply(201, "Created", ScheduleOut), NOT_FOUND, INVALID, Reply(403, "Not allowed to start the workflow")],
)
async def create_schedule(request: Request) -> Response:
    """The first run is the trigger's first tick (a `date` already past runs at once)."""
    ctx = context(request)
    body: ScheduleCreate = await json_body(request, ScheduleCreate)
    await _authorize_start(request, body.workflow_name)
    created = await services.create_schedule(
        body.workflow_name,
        body.trigger,
        body.trigger_kwargs,
        workflow_id=body.workflow_id,
        name=body.name,
        user_inputs=body.user_inputs,
        no_uncompleted_instance=body.no_uncompleted_instance,
        user_model=user_model(request),
        orchestrator=ctx.orchestrator,
    )
    return json_reply(ScheduleOut, created, status=201)


async def _workflow_of(request: Request, schedule_id: UUID) -> str:
    row: dict[str, Any] = await services.get_schedule(schedule_id, orchestrator=context(request).orchestrator)
    return str(row["workflow_name"])


@api.operation(
    "PUT",
    "/api/schedules/",
    summary="Change a schedule's name or trigger",
    body=Body(ScheduleUpdate, "orchestrator-core's APSchedulerJobUpdate"),
    replies=[Reply(200, "Changed", ScheduleOut), NOT_FOUND, INVALID, Reply(403, "Not allowed to start the workflow")],
)
async def update_schedule(request: Request) -> Response:
    """A new trigger counts its ticks from now."""
    ctx = context(request)
    body: ScheduleUpdate = await json_body(request, ScheduleUpdate)
    await _authorize_start(request, await _workflow_of(request, body.schedule_id))
    updated = await services.update_schedule(
        body.schedule_id,
        name=body.name,
        trigger=body.trigger,
        trigger_kwargs=body.trigger_kwargs,
        user_model=user_model(request),
        orchestrator=ctx.orchestrator,
    )
    return json_reply(ScheduleOut, updated)


@api.operation(
    "DELETE",
    "/api/schedules/",
    summary="Delete a schedule",
    body=Body(ScheduleDelete, "orchestrator-core's APSchedulerJobDelete"),
    replies=[Reply(204, "Deleted"), NOT_FOUND, INVALID, Reply(403, "Not allowed to start the workflow")],
)
async def delete_schedule(request: Request) -> Response:
    """The processes it started stay."""
    ctx = context(request)
    body: ScheduleDelete = await json_body(request, ScheduleDelete)
    await _authorize_start(request, await _workflow_of(request, body.schedule_id))
    await services.delete_schedule(body.schedule_id, user_model=user_model(request), orchestrator=ctx.orchestrator)
    return Response(status_code=204)
