"""Recovery without an operator: take over processes of dead runners, dispatch lost dispatches again, fail
callbacks that did not come in time, and retry `waiting` processes that no timer will wake.

Any number of sweepers may run (every API instance, every worker process): the statements skip rows another
sweeper holds, and a take-over increments the fencing token, so the dead runner can no longer commit if it
comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

import structlog

from orchestrator.persistence.store import Store
from orchestrator.runtime.executor import Executor

logger = structlog.get_logger(__name__)


class Sweeper:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        *,
        interval: float,
        redispatch_after: float,
        workflow_ids: Sequence[UUID] | None = None,
        retry_waiting_after: float = 3600.0,
    ) -> None:
        """`workflow_ids`: dispatch and take over only processes of these workflows. A program that runs processes
        itself passes the workflows it has loaded: one of another workflow would only fail here as unknown, while
        a program that loads it (another replica, after a deploy) can run it."""
        self.store = store
        self.executor = executor
        self.interval = interval
        self.redispatch_after = redispatch_after
        self.workflow_ids = workflow_ids
        self.retry_waiting_after = retry_waiting_after

    async def take_over_expired(self) -> int:
        async with self.store.transaction() as tx:
            refs = await self.store.take_over_expired(tx, workflow_ids=self.workflow_ids)
            for ref in refs:
                logger.warning("runner lost its lease; process dispatched again", process_id=str(ref.pid))
                await self.executor.resume(tx, ref)
        return len(refs)

    async def dispatch_undispatched(self, older_than: float | None = None) -> int:
        """Dispatch processes left `created`/`resumed` longer than `older_than` (default REDISPATCH_AFTER)."""
        after = self.redispatch_after if older_than is None else older_than
        async with self.store.transaction() as tx:
            found = await self.store.undispatched(tx, after, workflow_ids=self.workflow_ids)
            for ref, status in found:
                if status == "created":
                    await self.executor.start(tx, ref)
                else:
                    await self.executor.resume(tx, ref)
        if found and older_than is None:
            logger.warning("processes left undispatched were dispatched again", count=len(found))
        branches = await self.store.branch_claims.redispatch(after)
        if branches and older_than is None:
            logger.warning("branches dispatched again (worker lost, message lost, or engine unpaused)", count=branches)
        return len(found) + branches

    async def fail_timed_out_callbacks(self) -> int:
        failed = await self.store.fail_timed_out_callbacks()
        for pid in failed:
            logger.warning("callback timed out; process failed", process_id=str(pid))
        return len(failed)

    async def retry_waiting(self) -> int:
        """Retry `waiting` processes that have no timer (a `retrystep` without a retry policy) once they have
        waited `retry_waiting_after` seconds: no external cron job is needed."""
        async with self.store.transaction() as tx:
            refs = await self.store.resume_waiting(tx, self.retry_waiting_after)
            for ref in refs:
                await self.executor.resume(tx, ref)
        if refs:
            logger.info("waiting processes retried", count=len(refs))
        return len(refs)

    async def sweep(self) -> None:
        await self.take_over_expired()
        await self.dispatch_undispatched()
        await self.fail_timed_out_callbacks()
        await self.retry_waiting()
        await self.store.fold_status_counts()

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception as exc:  # keep sweeping through database hiccups
                logger.warning("sweep failed", error=str(exc))
