"""The `workflows` table: the workflows declared in code, registered at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from orchestrator.persistence.statements import Statements

_UPSERT = """
INSERT INTO workflows (name, target, description, is_task)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[])
ON CONFLICT (name) DO UPDATE
   SET target = EXCLUDED.target, is_task = EXCLUDED.is_task, deleted_at = NULL
RETURNING name, workflow_id
"""


class WorkflowStatements(Statements):
    async def upsert_workflows(self, rows: Sequence[tuple[str, str, str, bool]]) -> dict[str, UUID]:
        """Register code-declared workflows (name, target, description, is_task); return their ids by name."""
        if not rows:
            return {}
        records = await self.pool.fetch(
            _UPSERT, [r[0] for r in rows], [r[1] for r in rows], [r[2][:2000] for r in rows], [r[3] for r in rows]
        )
        return {r["name"]: r["workflow_id"] for r in records}
