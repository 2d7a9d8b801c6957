"""The soak's own workflow (`python -m bench.soak` loads it next to the examples): a step that fails at random, so
that failures and retries are part of the mixed load."""

from __future__ import annotations

import random

from orchestrator import State, StepList, Target, done, init, step, workflow
from orchestrator.examples.workflows import one, two


@step("Flaky call")
def flaky_call() -> State:
    if random.random() < 0.5:
        raise ConnectionError("the flaky system did not answer")
    return {"called": True}


@workflow("Soak: a step that fails at random, retried by the driver", target=Target.SYSTEM)
def soak_flaky() -> StepList:
    return init >> one >> flaky_call >> two >> done
