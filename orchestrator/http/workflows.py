"""`/api/workflows`: the workflows registered in the database, with the step names this program's code gives them."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from orchestrator.http.context import AppContext, context
from orchestrator.http.models import WorkflowOut
from orchestrator.http.params import path_uuid
from orchestrator.http.routing import Api, Param, Reply, json_reply
from orchestrator.persistence import reads

api = Api("workflows")


def _with_steps(ctx: AppContext, row: dict[str, Any]) -> dict[str, Any]:
    wf = ctx.orchestrator.registry.get(row["name"])
    steps = [{"name": name} for name in wf.step_names] if wf is not None else None
    return {**row, "key": row["name"], "steps": steps}


@api.operation(
    "GET",
    "/api/workflows",
    summary="List workflows",
    replies=[Reply(200, "Every workflow not deleted, by key", list[WorkflowOut])],
)
async def list_workflows(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    rows = await reads.list_workflows(ctx.pool)
    return json_reply(list[WorkflowOut], [_with_steps(ctx, row) for row in rows])


@api.operation(
    "GET",
    "/api/workflows/{workflow_id}",
    summary="Get a workflow",
    params=[Param("workflow_id", "path", {"type": "string", "format": "uuid"}, "The workflow id", required=True)],
    replies=[Reply(200, "The workflow", WorkflowOut), Reply(404, "No such workflow")],
)
async def get_workflow(request: Request) -> Response:
    ctx = context(request)
    workflow_id = path_uuid(request, "workflow_id")
    await ctx.authorize(request, "read", str(workflow_id))
    row = await reads.get_workflow(ctx.pool, workflow_id)
    if row is None:
        raise HTTPException(404, f"Workflow id {workflow_id} not found")
    return json_reply(WorkflowOut, _with_steps(ctx, row))
