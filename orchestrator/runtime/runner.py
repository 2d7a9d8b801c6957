"""A runner claims processes and runs them; it keeps its leases and its heartbeat alive while it does.

Every executor (the threadpool in the API process, each Dramatiq worker process) owns one runner. The runner's
`owner_id` is written into the leases it holds; a background task renews them every third of the lease TTL and
records a heartbeat in `workers`, the source of the worker status the API reports.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Literal
from uuid import UUID, uuid4

import structlog

from orchestrator.dsl.types import ProcessStatus
from orchestrator.persistence.errors import DatabaseUnavailableError
from orchestrator.persistence.records import Claim, Lease
from orchestrator.runtime.engine import Engine, Redispatch

logger = structlog.get_logger(__name__)

RunKind = Literal["new", "resume"]

CLAIM_RETRY_SECONDS = 120.0
"""How long a claim is retried while the database is unavailable before the dispatch is left to the sweeper."""

CLAIMABLE: dict[RunKind, tuple[str, ...]] = {"new": ("created",), "resume": ("resumed",)}
"""A new run only claims a `created` process, a resume only a `resumed` one: duplicates and stale deliveries
find the process in another status and are dropped."""


class Runner:
    def __init__(
        self,
        engine: Engine,
        *,
        kind: str,
        queues: Sequence[str] = (),
        capacity: int,
        redispatch: Redispatch,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.kind = kind
        self.queues = list(queues)
        self.capacity = capacity
        self.redispatch = redispatch
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"
        self.active: set[UUID] = set()
        self.branches = 0
        """Branch claims held (distributed mode): their leases are renewed with the processes'."""
        self.stopping = False
        self._keeper: asyncio.Task[None] | None = None

    async def run(self, pid: UUID, kind: RunKind, user: str | None = None) -> ProcessStatus | None:
        """Claim and run one process; None when it could not be claimed (already taken, or not in that status)."""
        claim = await self.claim(pid, kind, user)
        return None if claim is None else await self.run_claimed(claim)

    async def claim(self, pid: UUID, kind: RunKind, user: str | None = None) -> Claim | None:
        """Claim a process for this runner (compare-and-set); None for a duplicate or stale dispatch."""
        log = logger.bind(process_id=str(pid), run=kind)
        if self.stopping:
            log.info("runner is stopping; dispatch left for another runner")
            return None
        claim = await self._claim_retrying(pid, kind, user, log)
        if claim is None:
            log.info(
                "not claimed: the process is not in a claimable status (duplicate or stale dispatch), or the engine "
                "is paused"
            )
            return None
        self.active.add(pid)
        return claim

    async def _claim_retrying(self, pid: UUID, kind: RunKind, user: str | None, log: Any) -> Claim | None:
        """The claim, tried again while the database is unavailable (a failover, a cut connection) for up to
        CLAIM_RETRY_SECONDS: otherwise the process would wait for the sweeper's REDISPATCH_AFTER_SECONDS. A claim
        whose commit was lost with the connection is found `running` on retry and not claimed again; its lease
        expires and the sweeper hands it on."""
        delay, deadline = 0.25, time.monotonic() + CLAIM_RETRY_SECONDS
        while True:
            try:
                return await self.store.claims.claim(
                    pid, statuses=CLAIMABLE[kind], owner=self.owner_id, lease_ttl=self.engine.lease_ttl, user=user
                )
            except DatabaseUnavailableError as exc:
                if self.stopping or time.monotonic() + delay > deadline:
                    raise
                log.warning("claim failed: database unavailable; retrying", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def lease(self, *, on_claimed: Callable[[Claim], None]) -> Lease | None:
        """A lease for a process to be inserted already claimed by this runner; None while stopping."""
        return None if self.stopping else Lease(self.owner_id, self.engine.lease_ttl, on_claimed)

    def adopt(self, claim: Claim) -> None:
        """Hold a claim made with `lease()`: from now on its lease is renewed."""
        self.active.add(claim.pid)

    async def claim_branches(self, pid: UUID, paths: Sequence[str], limit: int) -> list[Claim]:
        """Claim up to `limit` of these branches of a process's fork in flight (compare-and-set on each); none for a
        duplicate or stale message, or while stopping."""
        if self.stopping:
            return []
        claims = await self.store.branch_claims.claim(
            pid, paths, limit=limit, owner=self.owner_id, lease_ttl=self.engine.lease_ttl
        )
        if not claims:
            logger.info("branch not claimed: duplicate or stale message, or the engine is paused", process_id=str(pid))
        self.branches += len(claims)
        return claims

    def adopt_branches(self, claims: Sequence[Claim]) -> None:
        """Hold branch claims made with the fork's detach (its first batch): from now on their leases are renewed."""
        self.branches += len(claims)

    async def run_claimed(self, claim: Claim, *, closing: bool = False) -> ProcessStatus | None:
        """Run a process (or a branch) this runner has claimed; its lease is kept alive until the run ends. A
        branch that was its fork's last runs the process on."""
        if claim.branch is not None:
            try:
                handed = await self.engine.run_branch(claim, stopping=lambda: self.stopping, owner=self.owner_id)
            finally:
                self.branches -= 1
            if handed is None:
                return None
            self.adopt(handed)
            return await self.run_claimed(handed, closing=True)
        try:
            return await self.engine.run(
                claim, stopping=lambda: self.stopping, redispatch=self.redispatch, closing=closing
            )
        finally:
            self.active.discard(claim.pid)

    async def open(self) -> None:
        await self._beat()
        self._keeper = asyncio.create_task(self._keep_alive(), name=f"lease-keeper-{self.owner_id}")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._keeper
        with suppress(Exception):
            await self.store.remove_worker(self.owner_id)

    async def _beat(self) -> None:
        await self.store.claims.renew_leases(self.owner_id, list(self.active), self.engine.lease_ttl)
        if self.branches:
            await self.store.branch_claims.renew(self.owner_id, self.engine.lease_ttl)
        await self.store.heartbeat(
            worker_id=self.owner_id,
            kind=self.kind,
            queues=self.queues,
            hostname=socket.gethostname(),
            os_pid=os.getpid(),
            capacity=self.capacity,
            running=len(self.active),
        )

    async def _keep_alive(self) -> None:
        interval = self.engine.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._beat()
            except Exception as exc:  # the database may be briefly gone; leases outlive a missed beat
                logger.warning("lease renewal failed", error=str(exc), worker=self.owner_id)
