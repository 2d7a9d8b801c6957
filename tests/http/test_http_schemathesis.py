"""schemathesis against `orchestrator serve`, driven by its own /api/openapi.json, with every check it has
(`--checks all`): no server error; no response (status, content type, headers, body, SSE events) that contradicts
the document; requests that fit the document accepted and those that do not refused; undeclared methods answered
405 with an `Allow` that lists exactly the declared ones; stateful sequences through the document's links.

Bounded for CI and derandomized (tests/http/schemathesis.toml: 25 examples per operation and phase, a fixed seed),
so every run sends the same requests. Run it by hand against any server with
`st --config-file tests/http/schemathesis.toml run URL/api/openapi.json --checks all`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.http import Served

CONFIG = Path(__file__).with_name("schemathesis.toml")
ST = Path(sys.executable).with_name("st")
OPERATIONS = 24
"""Every operation but the document itself, which schemathesis leaves out."""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_all_checks(serve_command: Callable[..., Served], tmp_path: Path) -> None:
    served = serve_command()
    command = [str(ST), "--config-file", str(CONFIG), "run", f"{served.url}/api/openapi.json", "--checks", "all"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=580, cwd=tmp_path, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12000:]
    tested = re.search(r"Tested: (\d+)", report)
    assert tested and int(tested.group(1)) >= OPERATIONS, report[-3000:]
    assert "Traceback" not in served.log.read_text()
