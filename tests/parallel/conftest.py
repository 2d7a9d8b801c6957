"""The parallel tests run the workflows of `parallelflows` beside `testflows`."""

from __future__ import annotations

import pytest

from orchestrator.settings import AppSettings


@pytest.fixture
def settings(settings: AppSettings) -> AppSettings:
    return settings.model_copy(update={"WORKFLOW_MODULES": ["testflows", "parallelflows", "orchestrator.examples.workflows"], "MAX_BRANCHES": 50})
