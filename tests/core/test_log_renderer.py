"""The plain console renderer writes what structlog's ConsoleRenderer(colors=False) writes, line for line."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
import structlog

from orchestrator.log import PlainConsoleRenderer

CASES: list[dict[str, Any]] = [
    {"event": "process created", "timestamp": "2026-12-03T16:30:49.123456Z", "level": "info", "user": "SYSTEM",
     "process_id": "3eb2c997-8e7d-432c-819e-1ac6a6b0e3f2", "workflow": "three_steps"},
    {"event": "a very long event name that is longer than thirty characters", "level": "warning", "n": 3},
    {"event": "quoted", "level": "error", "text": "two words", "eq": "a=b", "quote": "it's", "empty": "", "none": None,
     "nested": {"a": [1, 2]}, "uuid": UUID(int=1), "flag": True, "ratio": 0.5},
    {"event": "no timestamp"},
    {"timestamp": "T", "level": "debug"},
    {"event": 42, "level": "info"},
    {"event": "with a logger", "level": "info", "logger": "uvicorn.access"},
    {"event": "with an exception", "level": "error", "exception": "Traceback ...\nValueError: x"},
]  # fmt: skip


@pytest.mark.parametrize("event_dict", CASES)
def test_the_same_text_as_structlogs_console_renderer(event_dict: dict[str, Any]) -> None:
    expected = structlog.dev.ConsoleRenderer(colors=False)(None, "info", dict(event_dict))
    assert PlainConsoleRenderer()(None, "info", dict(event_dict)) == expected
