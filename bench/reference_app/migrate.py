"""orchestrator-core's migrations on the reference database (DATABASE_URI), then the bench's workflow rows.

Its AI-search revisions need the pgvector extension, which a plain PostgreSQL lacks. They run here, in the bench's
setup, with the pgvector parts left out: the `vector` extension and the HNSW indexes are not created, and the
embedding columns are `real[]`. The search tables exist, so orchestrator-core indexes each process when it exits
as a deployment does (without embeddings: `EMBEDDING_API_ENABLED` is off by default).
"""

import re
import sys
from pathlib import Path

import orchestrator.core
import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from orchestrator.core.settings import app_settings
from ref_workflows import WORKFLOWS

NEEDS_PGVECTOR = ("262744958e0c", "ca79fd834ba0", "544fd845554d")
"""add_ai_search_tables, add_ai_search_paths_table, add_per_entity_hnsw_indexes."""

_PGVECTOR_ONLY = re.compile(r"CREATE EXTENSION IF NOT EXISTS vector|USING HNSW|vector_\w+_ops", re.IGNORECASE)
_VECTOR_TYPE = re.compile(r"\bVECTOR\(\d+\)", re.IGNORECASE)


def _without_pgvector(sql: str) -> sa.TextClause:
    """A revision's statement with its pgvector parts left out."""
    if _PGVECTOR_ONLY.search(sql):
        return sa.text("SELECT 1")
    return sa.text(_VECTOR_TYPE.sub("REAL[]", sql))


def upgrade() -> None:
    migrations = Path(orchestrator.core.__file__).parent / "migrations"
    config = Config(str(migrations / "alembic.ini"))
    config.set_main_option("script_location", str(migrations))
    script = ScriptDirectory.from_config(config)
    for revision in NEEDS_PGVECTOR:
        script.get_revision(revision).module.text = _without_pgvector

    def steps(rev, _context):  # type: ignore[no-untyped-def]
        return script._upgrade_revs("heads", rev)

    with EnvironmentContext(config, script, fn=steps, destination_rev="heads"):
        script.run_env()


def insert_workflows() -> None:
    engine = sa.create_engine(str(app_settings.DATABASE_URI.get_secret_value()))
    with engine.begin() as conn:
        for name, (description, is_task) in WORKFLOWS.items():
            conn.execute(
                sa.text(
                    "INSERT INTO workflows (name, target, is_task, description) "
                    "VALUES (:name, 'SYSTEM', :is_task, :description) ON CONFLICT DO NOTHING"
                ),
                {"name": name, "is_task": is_task, "description": description},
            )
    engine.dispose()


if __name__ == "__main__":
    upgrade()
    insert_workflows()
    sys.exit(0)
