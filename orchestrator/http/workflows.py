"""`/api/workflows`: the workflows registered in the database, with the step names this program's code gives them."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from orchestrator import services
from orchestrator.http.context import context
from orchestrator.http.models import WorkflowOut
from orchestrator.http.params import path_uuid
from orchestrator.http.routing import Api, Param, Reply, json_reply

api = Api("workflows")


@api.operation(
    "GET",
    "/api/workflows",
    summary="List workflows",
    replies=[Reply(200, "Every workflow not deleted, by key", list[WorkflowOut])],
)
async def list_workflows(request: Request) -> Response:
    ctx = context(request)
    await ctx.authorize(request, "read")
    return json_reply(list[WorkflowOut], await services.list_workflows(orchestrator=ctx.orchestrator))


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
    workflow = await services.get_workflow(workflow_id, orchestrator=ctx.orchestrator)
    if workflow is None:
        raise HTTPException(404, f"Workflow id {workflow_id} not found")
    return json_reply(WorkflowOut, workflow)
