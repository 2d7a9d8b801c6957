"""What a user meets on the command line when something is wrong: one line naming it and the fix, exit status 2,
the traceback only with --debug; and a quick start that tells a short story."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import httpx
import pytest
from support.urls import database_url
from test_cli_and_migrations import ORCHESTRATOR, run_cli

from orchestrator.cli import SETTINGS_READ
from orchestrator.dsl.workflow import WorkflowRegistry
from orchestrator.exceptions import SettingsError, WorkflowNotFoundError, WorkflowNotLoadedError
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services import start_process
from orchestrator.settings import AppSettings, load_settings


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit status 2, no traceback, and a last stderr line `orchestrator: ...` that says each of `expected`."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("orchestrator"), result.stderr
    for text in expected:
        assert text in line
    return line


def test_invalid_initial_form_input(database_uri: str) -> None:
    result = run_cli("run", "--input", '{"customer": 5}', env={"DATABASE_URI": database_uri})
    assert_one_line(result, "invalid --input for provision_port", "customer", "valid string", "(got 5)")


def test_invalid_resume_input(database_uri: str) -> None:
    result = run_cli("run", "--resume", '{"approved": "x"}', env={"DATABASE_URI": database_uri})
    assert_one_line(result, "invalid --resume for 'Ask approval'", "approved", "valid boolean", "waits there")


def test_debug_shows_the_traceback(database_uri: str) -> None:
    result = run_cli("run", "--debug", "--input", '{"customer": 5}', env={"DATABASE_URI": database_uri})
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "FormValidationError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("orchestrator: invalid --input")


@pytest.mark.parametrize("command", [["run"], ["db", "status"], ["db", "upgrade"]])
def test_unknown_database(command: list[str]) -> None:
    uri = database_url("no_such_db")
    result = run_cli(*command, env={"DATABASE_URI": uri})
    assert_one_line(result, 'database "no_such_db" does not exist', "DATABASE_URI")


def test_unknown_role() -> None:
    uri = database_url("postgres").replace("postgres@", "no_such_role@", 1)
    result = run_cli("db", "status", env={"DATABASE_URI": uri})
    assert_one_line(result, 'role "no_such_role" does not exist', "correct the user")


def test_unreachable_database_for_db_status() -> None:
    result = run_cli("db", "status", env={"DATABASE_URI": "postgresql://postgres@127.0.0.1:1/none"})
    assert_one_line(result, "cannot connect to postgresql://postgres@127.0.0.1:1/none", "PostgreSQL is running")


def test_unknown_workflow_module(database_uri: str) -> None:
    result = run_cli("serve", "--port", "0", "--workflows", "no.such.module", env={"DATABASE_URI": database_uri})
    assert_one_line(result, "'no.such.module'", "WORKFLOW_MODULES")
    assert "uvicorn" not in result.stderr


def test_unknown_workflow_key(database_uri: str) -> None:
    result = run_cli("run", "no_such_workflow", env={"DATABASE_URI": database_uri})
    assert_one_line(result, "no_such_workflow", "provision_port", "--workflows")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "--port", "99999"], "99999 is not a port"),
        (["serve", "--port", "-1"], "-1 is not a port"),
        (["run", "--timeout", "-1"], "positive number of seconds"),
        (["run", "--timeout", "nan"], "positive number of seconds"),
    ],
)
def test_bad_arguments(args: list[str], expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert expected in result.stderr


def test_busy_port_is_one_line(database_uri: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("serve", "--port", port, env={"DATABASE_URI": database_uri})
    assert_one_line(result, f"cannot listen on 127.0.0.1:{port}", "choose another --port")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LOG_LEVEL": "LOUD"}, "invalid setting LOG_LEVEL"),
        ({"BROKER_URL": "notaurl"}, "invalid setting BROKER_URL: must be an AMQP URL"),
    ],
)
def test_bad_settings(database_uri: str, env: dict[str, str], expected: str) -> None:
    assert_one_line(run_cli("serve", "--port", "0", env={"DATABASE_URI": database_uri, **env}), expected)


def test_settings_validation() -> None:
    assert load_settings(LOG_LEVEL="debug").LOG_LEVEL == "DEBUG"
    assert load_settings(CELERY_BROKER_URL="amqps://u:p@rabbit/vhost").CELERY_BROKER_URL == "amqps://u:p@rabbit/vhost"
    for url in ("notaurl", "http://rabbit/", "amqp:///vhost", "amqp://rabbit:99999/"):
        with pytest.raises(SettingsError, match="BROKER_URL") as caught:
            load_settings(BROKER_URL=url)
        assert url not in str(caught.value), "a URL may hold a password: it is not repeated"


def test_help_lists_the_settings_each_command_reads() -> None:
    for name in {name for names in SETTINGS_READ.values() for name in names}:
        assert name in AppSettings.model_fields, name
    shim = run_cli("celery-shim", "--help")
    assert "CELERY_BROKER_URL" in shim.stdout and "CELERY_QUEUES" in shim.stdout
    upgrade = run_cli("db", "upgrade", "--help")
    assert "DATABASE_URI" in upgrade.stdout and "EMBEDDED_DATA_DIR" in upgrade.stdout


def test_a_suspended_run_hints_at_resume(database_uri: str) -> None:
    result = run_cli("run", "three_steps_with_input", env={"DATABASE_URI": database_uri})
    assert result.returncode == 1
    assert "ended suspended" in result.stdout
    assert "--resume" in result.stderr and "'Wait for input'" in result.stderr and "note" in result.stderr
    answered = run_cli(
        "run", "three_steps_with_input", "--resume", '{"note": "hi"}', env={"DATABASE_URI": database_uri}
    )
    assert answered.returncode == 0, answered.stderr
    assert "ended completed" in answered.stdout


def test_step_failed_line_carries_the_process_id(worker_env: dict[str, str]) -> None:
    result = run_cli("run", "tf_assert", "--workflows", "testflows", env=worker_env)
    assert result.returncode == 1
    pid = result.stdout.split("process ", 1)[1].split()[0]
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "step failed"]
    assert failed and all(line["process_id"] == pid for line in failed)


def test_quick_start_tells_a_short_story() -> None:
    # Not under pytest's tmp_path: another pytest session starting meanwhile makes its root private again, and
    # (as root) the embedded server runs as another user.
    with tempfile.TemporaryDirectory(prefix="orchestrator-quick-start-") as tmp:
        data_dir = Path(tmp) / "pg"
        result = run_cli("run", env={"EMBEDDED_DATA_DIR": str(data_dir), "DATABASE_URI": ""}, timeout=120)
        embedded_log = (data_dir / "orchestrator-embedded.log").read_text()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"database: embedded PostgreSQL in {data_dir}; executor: threadpool"
    assert len(lines) < 40
    assert result.stderr == "", "no warnings, no initdb or pg_ctl output, no log lines"
    assert "initdb" in embedded_log


async def test_start_of_a_registered_workflow_whose_module_is_not_loaded(database_uri: str) -> None:
    conn = await asyncpg.connect(database_uri)
    await conn.execute("INSERT INTO workflows (name) VALUES ('loaded_elsewhere')")
    await conn.close()
    settings = load_settings(DATABASE_URI=database_uri, MIGRATE_ON_START=False)
    async with Orchestrator(settings, registry=WorkflowRegistry()) as orch:
        with pytest.raises(WorkflowNotLoadedError, match="'loaded_elsewhere' is registered but its module is not"):
            await start_process("loaded_elsewhere", orchestrator=orch)
        with pytest.raises(WorkflowNotFoundError) as caught:
            await start_process("nowhere", orchestrator=orch)
        assert type(caught.value) is WorkflowNotFoundError


def test_serve_without_workflow_modules_warns_and_names_an_unloaded_workflow(
    worker_env: dict[str, str], database_uri: str, tmp_path: Path
) -> None:
    env = {**worker_env, "WORKFLOW_MODULES": "", "MIGRATE_ON_START": "true"}
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*ORCHESTRATOR, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        assert proc.stdout is not None
        match = re.search(r"listening on (http://\S+)", proc.stdout.readline())
        assert match, log.read_text()
        warnings = [json.loads(line) for line in log.read_text().splitlines() if '"warning"' in line]
        assert any("no workflow module is loaded" in line["event"] for line in warnings)
        run_cli("run", "three_steps", env={"DATABASE_URI": database_uri})  # registers the examples, as a worker would
        reply = httpx.post(f"{match.group(1)}/api/processes/three_steps", json=[{}])
        assert reply.status_code == 404
        assert "'three_steps' is registered but its module is not loaded" in reply.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "command",
    [["celery-shim"], ["schedules", "list"], ["run", "--timeout", "5"]],
)
def test_every_command_with_an_unreachable_database_says_so_in_one_line(command: list[str]) -> None:
    result = run_cli(*command, env={"DATABASE_URI": "postgresql://postgres@127.0.0.1:1/none"})
    assert_one_line(result, "cannot connect to postgresql://postgres@127.0.0.1:1/none")


def test_celery_shim_with_an_unreachable_broker_says_so_in_one_line(database_uri: str) -> None:
    env = {"DATABASE_URI": database_uri, "CELERY_BROKER_URL": "amqp://guest:secret@127.0.0.1:1/"}
    line = assert_one_line(run_cli("celery-shim", env=env), "Celery broker", "CELERY_BROKER_URL")
    assert "secret" not in line
