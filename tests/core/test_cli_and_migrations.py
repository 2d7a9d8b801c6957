"""The command line, settings validation and migrations, as a user meets them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from orchestrator.exceptions import SettingsError
from orchestrator.persistence import migrations
from orchestrator.settings import ExecutorType, load_settings

ORCHESTRATOR = [sys.executable, "-m", "orchestrator.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [*ORCHESTRATOR, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_invalid_setting_is_one_line_and_exit_2(database_uri: str) -> None:
    result = run_cli("db", "status", env={"DATABASE_URI": database_uri, "MAX_WORKERS": "lots"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "MAX_WORKERS" in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_with_an_unreachable_database_is_one_line() -> None:
    result = run_cli("serve", "--port", "0", env={"DATABASE_URI": "postgresql://nobody@127.0.0.1:1/none"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot connect to postgresql://nobody@127.0.0.1:1/none" in result.stderr


def test_bad_cli_argument_exit_2() -> None:
    result = run_cli("run", "--input", "not json")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr


def test_settings_aliases() -> None:
    assert load_settings(EXECUTOR="celery").EXECUTOR is ExecutorType.DRAMATIQ
    settings = load_settings(DATABASE_URI="postgresql+psycopg://u:p@h/db", WORKFLOW_MODULES="a.b, c")
    assert settings.DATABASE_URI == "postgresql://u:p@h/db"
    assert settings.WORKFLOW_MODULES == ["a.b", "c"]
    with pytest.raises(SettingsError, match="DATABASE_URI"):
        load_settings(DATABASE_URI="mysql://x")
    with pytest.raises(SettingsError, match="EXECUTOR"):
        load_settings(EXECUTOR="kubernetes")


async def test_db_status_exits_3_while_a_migration_is_pending(database_uri: str) -> None:
    conn = await asyncpg.connect(database_uri)
    await conn.execute("DELETE FROM schema_migrations")
    await conn.close()
    result = run_cli("db", "status", env={"DATABASE_URI": database_uri})
    assert result.returncode == 3
    assert "0001_initial: pending" in result.stdout


def test_db_upgrade_and_status(template_db: str, database_uri: str) -> None:
    result = run_cli("db", "status", env={"DATABASE_URI": database_uri})
    assert result.returncode == 0, result.stderr
    assert "0001_initial: applied" in result.stdout
    result = run_cli("db", "upgrade", env={"DATABASE_URI": database_uri})
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


async def test_concurrent_upgrades_apply_each_migration_once(database_uri: str) -> None:
    admin = await asyncpg.connect(database_uri)
    name = f"orch_mig_{os.getpid()}_{id(admin)}"
    base = database_uri.rpartition("/")[0]
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conns = [await asyncpg.connect(f"{base}/{name}") for _ in range(4)]
        results = await asyncio.gather(*(migrations.upgrade(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(migrations.discover())]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations")
        assert len(rows) == len(migrations.discover())
        for c in conns:
            await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_history_tables_leave_a_tenth_of_each_page_free(database_uri: str) -> None:
    """Migration 0008: inserts append instead of filling the free-space map's small gaps in old pages (each a page
    read and a full-page WAL image per row on a large history)."""
    conn = await asyncpg.connect(database_uri)
    try:
        rows = await conn.fetch(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[]) AND relkind = 'r'",
            ["processes", "process_steps", "input_states"],
        )
    finally:
        await conn.close()
    assert {r["relname"]: r["reloptions"] for r in rows} == {
        name: ["fillfactor=90"] for name in ("processes", "process_steps", "input_states")
    }


def test_readme_main_command_runs_the_example_on_embedded_postgres(tmp_path: Path) -> None:
    env = {"EMBEDDED_DATA_DIR": str(tmp_path / "pg"), "DATABASE_URI": "", "LOG_FORMAT": "json"}
    result = run_cli("run", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"embedded PostgreSQL in {tmp_path / 'pg'}" in result.stdout
    assert "ended completed" in result.stdout
    assert '"provisioned": true' in result.stdout
    # JSON log lines about the process carry its id.
    pid = result.stdout.split("process ", 1)[1].split()[0]
    assert any(f'"process_id": "{pid}"' in line for line in result.stderr.splitlines())
