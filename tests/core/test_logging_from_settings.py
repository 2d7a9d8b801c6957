"""An Orchestrator opened in a program configures logging from LOG_LEVEL/LOG_FORMAT as the CLI does, unless the
program configured logging itself. Each case runs in a fresh interpreter: pytest's own log handlers would count as
a program's configuration here."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
import asyncio, logging, sys
import structlog
from orchestrator import Orchestrator
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="mine: %(message)s")
async def main():
    async with Orchestrator():
        structlog.get_logger("app").debug("a debug line")
        structlog.get_logger("app").warning("a warning line")
        logging.getLogger("lib").debug("a library debug line")
asyncio.run(main())
"""


def run(mode: str, database_uri: str, **env: str) -> str:
    environment = {"DATABASE_URI": database_uri, "MIGRATE_ON_START": "false", "PATH": "/usr/bin:/bin", **env}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], env=environment, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout + done.stderr


def test_settings_decide_when_the_program_has_not_configured_logging(database_uri: str) -> None:
    lines = [
        json.loads(line) for line in run("plain", database_uri, LOG_LEVEL="WARNING", LOG_FORMAT="json").splitlines()
    ]
    assert [line["event"] for line in lines] == ["a warning line"]
    assert lines[0]["level"] == "warning"


def test_a_program_that_configured_logging_keeps_its_choice(database_uri: str) -> None:
    output = run("configured", database_uri, LOG_LEVEL="WARNING", LOG_FORMAT="json")
    assert "mine: a library debug line" in output  # the program's stdlib set-up stands, whatever LOG_LEVEL says
    assert "a debug line" in output  # and structlog keeps its default (prints everything), not our JSON
    assert not any(line.startswith("{") for line in output.splitlines())
