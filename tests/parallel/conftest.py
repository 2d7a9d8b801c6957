"""The parallel tests run the workflows of `parallelflows` (and the examples) beside `testflows`."""

from __future__ import annotations

import pytest

from orchestrator.settings import AppSettings

MODULES = ["testflows", "parallelflows", "orchestrator.examples.workflows"]


@pytest.fixture
def settings(settings: AppSettings) -> AppSettings:
    return settings.model_copy(update={"WORKFLOW_MODULES": MODULES, "MAX_BRANCHES": 50})
