"""Retry policies: how often, and how long after, a failing step is tried again by the engine itself.

`@step("Call API", retry=RetryPolicy(max_attempts=5, initial_interval=2, backoff=2, max_interval=60))`: a failure
of attempt n (n < max_attempts) leaves the process `waiting` and it is tried again
`min(initial_interval * backoff**(n-1), max_interval)` later, with no API call; the failure of the last attempt,
or an exception not in `retry_on`, fails the process with that error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from orchestrator.exceptions import InvalidWorkflowError

Seconds = timedelta | float


def _seconds(value: Seconds, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise InvalidWorkflowError(f"RetryPolicy {name} must not be negative, got {value!r}")
    return seconds


@dataclass(frozen=True, init=False)
class RetryPolicy:
    max_attempts: int
    initial_interval: float
    backoff: float
    max_interval: float
    retry_on: tuple[type[BaseException], ...]

    def __init__(
        self,
        max_attempts: int = 3,
        initial_interval: Seconds = 1.0,
        backoff: float = 2.0,
        max_interval: Seconds = 3600.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    ) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidWorkflowError(
                f"RetryPolicy max_attempts must be an integer of at least 1, got {max_attempts!r}"
            )
        if backoff < 1:
            raise InvalidWorkflowError(f"RetryPolicy backoff must be at least 1, got {backoff!r}")
        types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            raise InvalidWorkflowError(f"RetryPolicy retry_on must be exception types, got {retry_on!r}")
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "initial_interval", _seconds(initial_interval, "initial_interval"))
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "max_interval", _seconds(max_interval, "max_interval"))
        object.__setattr__(self, "retry_on", types)

    def delay_after(self, attempt: int) -> timedelta:
        """How long after the failure of `attempt` (1-based) the next attempt runs."""
        seconds = min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)
        return timedelta(seconds=seconds)

    def retries(self, exc: BaseException | None, attempt: int) -> bool:
        """Whether the failure of `attempt` with `exc` is tried again."""
        return attempt < self.max_attempts and (exc is None or isinstance(exc, self.retry_on))
