"""The bodies the API accepts and returns, as pydantic models: endpoints serialise through them and the OpenAPI
document is generated from them, so the two cannot drift apart.

Datetimes leave as epoch seconds (floats), as orchestrator-core sends them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictBool

Epoch = Annotated[datetime, PlainSerializer(lambda value: value.timestamp(), return_type=float)]
JSONObject = dict[str, Any]

StartPages = list[JSONObject]
"""The initial form's pages, one object per page (`[{}]` for a workflow without input)."""

ResumePages = list[JSONObject] | JSONObject
"""The waiting step's form pages; a single object stands for one page (`{}` to retry a failed step)."""

CallbackPayload = JSONObject
ProgressPayload = JSONObject | str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; some errors add members (`validation_errors`, `form`)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class ValidationProblem(ProblemDetails):
    validation_errors: list[JSONObject]


class FormIncompleteProblem(ProblemDetails):
    form: JSONObject
    meta: JSONObject | None = None


class Created(BaseModel):
    id: UUID


class Count(BaseModel):
    count: int


class StepRecord(BaseModel):
    step_id: UUID
    stepid: UUID
    name: str
    status: str
    created_by: str | None
    executed: Epoch | None
    started: Epoch | None
    completed: Epoch | None
    state: JSONObject
    state_delta: JSONObject
    branch: str | None = None
    """The branch of a `parallel`/`map_parallel` the step ran in (`Fan out[0]`, nested `Fan out[0]/Each[2]`);
    null for the workflow's own steps."""


class PendingStep(BaseModel):
    name: str
    status: Literal["pending"]


class ProcessOut(BaseModel):
    """orchestrator-core's ProcessSchema; `current_state`, `steps` and `form` are only filled for one process."""

    process_id: UUID
    workflow_id: UUID
    workflow_name: str
    workflow_target: str | None
    is_task: bool
    created_by: str | None
    failed_reason: str | None
    traceback: str | None
    started_at: Epoch
    last_modified_at: Epoch
    last_status: str
    last_step: str | None
    assignee: str
    note: str | None
    current_state: JSONObject | None = None
    steps: list[StepRecord | PendingStep] | None = None
    form: JSONObject | None = None
    attempt: int | None = None
    """The attempt of the failing step under a retry policy (its last, once `failed`)."""
    next_attempt_at: Epoch | None = None
    """When a `waiting` process continues by itself: its next attempt, or the end of its sleep."""
    schedule_id: UUID | None = None
    """The schedule that started this process (its `created_by` is `schedule:<name>`)."""


class NotePatch(BaseModel):
    """Only the fields sent are applied."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=5000)


class StatusCounts(BaseModel):
    process_counts: dict[str, int]
    task_counts: dict[str, int]


class WorkflowStep(BaseModel):
    name: str


class WorkflowOut(BaseModel):
    workflow_id: UUID
    key: str
    """What `POST /api/processes/{workflow_key}` takes (orchestrator-core calls it the workflow's name)."""
    name: str
    target: str
    is_task: bool
    description: str | None
    created_at: Epoch
    steps: list[WorkflowStep] | None
    """None when the workflow is registered in the database but not in this program's code."""


class EngineLock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    global_lock: StrictBool


class EngineStatus(BaseModel):
    global_lock: bool
    global_status: Literal["RUNNING", "PAUSING", "PAUSED"]
    running_processes: int


class WorkerStatus(BaseModel):
    executor_type: str
    number_of_workers_online: int
    number_of_queued_jobs: int
    number_of_running_jobs: int
