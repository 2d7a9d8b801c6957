"""An external system's answer to a process awaiting it (`callback_step`): its result, or progress meanwhile."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from orchestrator.dsl import jsonutil
from orchestrator.dsl.state import CALLBACK_RESULT_KEY, CALLBACK_TOKEN, REMOVE_KEYS
from orchestrator.dsl.types import SYSTEM_USER, ProcessStatus
from orchestrator.exceptions import CallbackTokenError, EngineLockedError, ProcessNotFoundError, ProcessStatusError
from orchestrator.persistence import edits
from orchestrator.persistence.store import ProcessRef, StepRow, _rows
from orchestrator.runtime.orchestrator import Orchestrator, current


async def _awaiting_row(orch: Orchestrator, process_id: UUID, token: str) -> tuple[dict[str, Any], StepRow]:
    row = await orch.store.load(process_id)
    if row is None:
        raise ProcessNotFoundError(process_id)
    if row["last_status"] != ProcessStatus.AWAITING_CALLBACK:
        raise ProcessStatusError("This process is not in an awaiting state.")
    rows = _rows(row["steps"])
    last = rows[-1]
    if last.state.get(CALLBACK_TOKEN) != token:
        raise CallbackTokenError
    return row, last


async def continue_with_callback(
    process_id: UUID, token: str, payload: Any, *, orchestrator: Orchestrator | None = None
) -> None:
    """Store a callback's payload in the awaiting step's state and resume the process."""
    orch = orchestrator or current()
    row, last = await _awaiting_row(orch, process_id, token)
    if await orch.store.engine_locked():
        raise EngineLockedError
    key = last.state.get(CALLBACK_RESULT_KEY) or "callback_result"
    state = jsonutil.normalise({**last.state, key: payload})
    async with orch.store.transaction() as tx:
        await edits.set_step_state(tx, last.stepid, state)
        await orch.executor.resume(tx, ProcessRef(process_id, row["is_task"], row["workflow_target"], SYSTEM_USER))
        if not await orch.store.mark_resumed(
            tx, pid=process_id, seen_status=ProcessStatus.AWAITING_CALLBACK, user=SYSTEM_USER, user_input={}
        ):
            raise ProcessStatusError("This process is not in an awaiting state.")


async def report_callback_progress(
    process_id: UUID, token: str, progress: Any, *, orchestrator: Orchestrator | None = None
) -> None:
    """Record progress on the awaiting step, in place; it disappears at the next logged step."""
    orch = orchestrator or current()
    _, last = await _awaiting_row(orch, process_id, token)
    if await orch.store.engine_locked():
        raise EngineLockedError
    removed = sorted({*(last.state.get(REMOVE_KEYS) or []), "callback_progress"})
    state = jsonutil.normalise({**last.state, "callback_progress": progress, REMOVE_KEYS: removed})
    async with orch.store.transaction() as tx:
        await edits.set_step_state(tx, last.stepid, state)
        tx.on_commit(lambda: orch.store.events.publish({"pid": str(process_id), "progress": True}))
