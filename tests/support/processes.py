"""Subprocesses of the tests (workers, servers, engine programs): their command lines and environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = TESTS_DIR.parent
DRAMATIQ = str(Path(sys.executable).with_name("dramatiq"))
ENGINE_SCRIPT = Path(__file__).resolve().with_name("engine_process.py")


def subprocess_env(database_uri: str) -> dict[str, str]:
    """This environment without pytest's and EXECUTOR, on `database_uri`, with the test workflows importable
    (`testflows` from tests/) and JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EXECUTOR"))}
    env.update(
        DATABASE_URI=database_uri,
        WORKFLOW_MODULES="testflows",
        PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)]),
        MIGRATE_ON_START="false",
        LOG_FORMAT="json",
    )
    return env


def dramatiq_command(*queues: str, processes: int = 1, threads: int = 4) -> list[str]:
    """`dramatiq orchestrator.actors -p N -t T [-Q queues...]`: worker processes of our actors."""
    args = [DRAMATIQ, "orchestrator.actors", "-p", str(processes), "-t", str(threads)]
    return [*args, "-Q", *queues] if queues else args
