"""`/api/schedules`: orchestrator-core 5.x's payloads (`POST`/`PUT`/`DELETE /api/schedules/`), plus listing.

Creating, changing or deleting a schedule needs the right to start its workflow (the `start` action on the
workflow's key, and its authorize callback). A body that does not fit (an unknown trigger argument) is a 422
problem, a trigger that fits but cannot fire (a zero interval, a bad cron expression or time zone) a 400, an
unknown workflow or schedule a 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http.auth import user_model
from orchestrator.http.context import context
from orchestrator.http.models import Epoch, JSONObject
from orchestrator.http.params import MAX_JSON_INT, integral, json_body, path_uuid
from orchestrator.http.routing import Api, Body, Param, Reply, json_reply

api = Api("schedules")

Trigger = Literal["interval", "cron", "date"]
Units = Annotated[StrictFloat, Field(ge=0, le=MAX_JSON_INT)]
CronField = StrictStr | Annotated[StrictInt, BeforeValidator(integral), Field(ge=-MAX_JSON_INT, le=MAX_JSON_INT)]
Text = Annotated[StrictStr, Field(max_length=255)]


def _one_empty_page() -> list[JSONObject]:
    return [{}]


class IntervalKwargs(BaseModel):
    """APScheduler's interval trigger: the units add up to a positive interval."""

    model_config = ConfigDict(extra="forbid")

    weeks: Units = 0
    days: Units = 0
    hours: Units = 0
    minutes: Units = 0
    seconds: Units = 0
    start_date: Text | None = Field(default=None, description="ISO 8601; ticks count from here")
    timezone: Text | None = Field(default=None, description="Of a start_date without offset (default UTC)")


class CronKwargs(BaseModel):
    """APScheduler's cron fields (mapped onto a five-field expression), or `expression` itself."""

    model_config = ConfigDict(extra="forbid")

    minute: CronField | None = None
    hour: CronField | None = None
    day: CronField | None = None
    month: CronField | None = None
    day_of_week: CronField | None = Field(default=None, description="0-6 from Monday, or mon-sun")
    second: CronField | None = Field(default=None, description="0 only: cron triggers run at whole minutes")
    expression: Text | None = Field(default=None, examples=["*/5 * * * *"])
    timezone: Text | None = Field(default=None, description="Default UTC", examples=["Europe/Amsterdam"])


class DateKwargs(BaseModel):
    """Once, at `run_date`."""

    model_config = ConfigDict(extra="forbid")

    run_date: Text = Field(description="ISO 8601 (UTC unless it has an offset)", examples=["2030-01-01T03:00:00"])
    timezone: Text | None = None


TriggerKwargs = IntervalKwargs | CronKwargs | DateKwargs


class _ScheduleCreate(BaseModel):
    """orchestrator-core's `APSchedulerJobCreate` (`workflow_id` optional here), plus `no_uncompleted_instance`."""

    workflow_name: str = Field(min_length=1, max_length=255)
    workflow_id: UUID | None = None
    name: str | None = Field(default=None, max_length=255)
    user_inputs: list[JSONObject] = Field(default_factory=_one_empty_page)
    no_uncompleted_instance: StrictBool = False
    """Skip a tick while the process of the previous tick has not finished."""
    scheduled_type: Literal["create"] | None = None


class IntervalScheduleCreate(_ScheduleCreate):
    trigger: Literal["interval"]
    trigger_kwargs: IntervalKwargs = Field(examples=[{"hours": 12}])


class CronScheduleCreate(_ScheduleCreate):
    trigger: Literal["cron"]
    trigger_kwargs: CronKwargs = Field(examples=[{"minute": "*/5"}])


class DateScheduleCreate(_ScheduleCreate):
    trigger: Literal["date"]
    trigger_kwargs: DateKwargs


ScheduleCreate = Annotated[
    IntervalScheduleCreate | CronScheduleCreate | DateScheduleCreate, Field(discriminator="trigger")
]


class ScheduleUpdate(BaseModel):
    """orchestrator-core's `APSchedulerJobUpdate`; `trigger_kwargs` without `trigger` keeps the trigger's kind."""

    schedule_id: UUID
    name: str | None = Field(default=None, max_length=255)
    trigger: Trigger | None = None
    trigger_kwargs: TriggerKwargs | None = None
    scheduled_type: Literal["update"] | None = None


def _kwargs(given: TriggerKwargs | None) -> dict[str, Any] | None:
    return None if given is None else given.model_dump(exclude_unset=True)


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
INVALID = Reply(400, "The trigger cannot fire (a zero interval, a bad cron expression or time zone)")
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
    body: IntervalScheduleCreate | CronScheduleCreate | DateScheduleCreate = await json_body(request, ScheduleCreate)
    await _authorize_start(request, body.workflow_name)
    created = await services.create_schedule(
        body.workflow_name,
        body.trigger,
        _kwargs(body.trigger_kwargs),
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
        trigger_kwargs=_kwargs(body.trigger_kwargs),
        user_model=user_model(request),
        orchestrator=ctx.orchestrator,
    )
    return json_reply(ScheduleOut, updated)


@api.operation(
    "DELETE",
    "/api/schedules/",
    summary="Delete a schedule",
    body=Body(ScheduleDelete, "orchestrator-core's APSchedulerJobDelete"),
    replies=[Reply(204, "Deleted"), NOT_FOUND, Reply(403, "Not allowed to start the workflow")],
)
async def delete_schedule(request: Request) -> Response:
    """The processes it started stay."""
    ctx = context(request)
    body: ScheduleDelete = await json_body(request, ScheduleDelete)
    await _authorize_start(request, await _workflow_of(request, body.schedule_id))
    await services.delete_schedule(body.schedule_id, user_model=user_model(request), orchestrator=ctx.orchestrator)
    return Response(status_code=204)
