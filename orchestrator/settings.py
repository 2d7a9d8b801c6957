"""Application settings, read from the environment and `.env` (pydantic-settings).

The names follow orchestrator-core where it has one (`EXECUTOR`, `DATABASE_URI`, `MAX_WORKERS`,
`CELERY_TARGET_QUEUES`), so that existing deployments keep their environment; the rest are named after the
operational concern they control.
"""

from __future__ import annotations

import json
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.dsl.types import Target
from orchestrator.exceptions import SettingsError


class ExecutorType(StrEnum):
    THREADPOOL = "threadpool"
    DRAMATIQ = "dramatiq"


class LogFormat(StrEnum):
    CONSOLE = "console"
    JSON = "json"


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

QUEUE_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9._-]*$"
AMQP_SCHEMES = ("amqp", "amqps")


def _default_embedded_dir() -> Path:
    return Path(platformdirs.user_data_dir("orchestrator-async")) / "postgres"


def _split_list(value: Any) -> Any:
    """Accept `a,b` as well as a JSON list, so that shell users need no quoting gymnastics."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    EXECUTOR: ExecutorType = ExecutorType.THREADPOOL
    """`threadpool` runs processes in the API process; `dramatiq` (alias `celery`) hands them to workers."""

    DATABASE_URI: str | None = None
    """PostgreSQL URI. Unset: an embedded PostgreSQL is started in EMBEDDED_DATA_DIR."""

    EMBEDDED_DATA_DIR: Path = Field(default_factory=_default_embedded_dir)
    MIGRATE_ON_START: bool = True
    DB_POOL_SIZE: int = Field(default=20, ge=2, le=500)
    DB_SYNCHRONOUS_COMMIT: Literal["on", "off", "local", "remote_write", "remote_apply"] = "on"
    """PostgreSQL's synchronous_commit for our connections. `off` makes each step's commit return before its WAL
    flush (several times faster on slow disks); a PostgreSQL crash may then lose the last few hundred ms of step
    outcomes, and those steps run again. Never a corrupt or doubled process: claims and fencing still hold."""

    MAX_WORKERS: int = Field(default=64, ge=1, le=10_000)
    """Processes that run at once in one executor (asyncio tasks) and threads for sync steps (a run holds one)."""

    MAX_BRANCHES: int = Field(default=10_000, ge=1, le=1_000_000)
    """The most branches one `parallel`/`map_parallel` may fork; more fail the step before any branch runs."""

    WORKFLOW_MODULES: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Modules imported at start-up so that their workflows register (comma-separated or a JSON list)."""

    LOG_FORMAT: LogFormat = LogFormat.CONSOLE
    LOG_LEVEL: LogLevel = "INFO"
    """`DEBUG` also makes the command line show the traceback of a user error. Unset, `orchestrator run` on the
    console shows warnings only: it prints its own account of the run."""

    LEASE_TTL_SECONDS: float = Field(default=20.0, gt=0, le=3600)
    """How long a runner's claim on a process lives without renewal; a dead runner's process is taken over after it."""

    SWEEP_INTERVAL_SECONDS: float = Field(default=5.0, gt=0, le=3600)
    """How often expired leases and undelivered dispatches are looked for."""

    REDISPATCH_AFTER_SECONDS: float = Field(default=300.0, gt=0)
    """A process left `created` or `resumed` this long (a lost message) is dispatched again."""

    RETRY_WAITING_AFTER_SECONDS: float = Field(default=3600.0, gt=0)
    """A `waiting` process without a retry policy (a `retrystep`) is retried after this long, by the engine itself
    (orchestrator-core's hourly `task_resume_workflows`)."""

    SHUTDOWN_TIMEOUT_SECONDS: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long running steps may take to finish before the runner gives up on them."""

    BROKER_URL: str = "amqp://guest:guest@127.0.0.1:5672/"
    TASKS_QUEUE: str = Field(default="tasks", pattern=QUEUE_NAME_PATTERN)
    WORKFLOWS_QUEUE: str = Field(default="workflows", pattern=QUEUE_NAME_PATTERN)
    TARGET_QUEUES: dict[Target, str] = Field(
        default_factory=dict, validation_alias=AliasChoices("TARGET_QUEUES", "CELERY_TARGET_QUEUES")
    )
    """Per-target queue override, e.g. `{"RECONCILE": "reconcile"}` (orchestrator-core's CELERY_TARGET_QUEUES)."""

    CELERY_BROKER_URL: str | None = None
    """Broker the Celery shim consumes from; defaults to BROKER_URL (then the queue names must not collide)."""

    CELERY_QUEUES: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["new_tasks", "new_workflows", "resume_tasks", "resume_workflows"]
    )
    CELERY_PREFETCH: int = Field(default=16, ge=1, le=10_000)

    API_TOKEN: SecretStr | None = None
    MAX_BODY_BYTES: int = Field(default=1_048_576, ge=1024)

    PRUNE_COMPLETED_OLDER_THAN: timedelta | None = None
    """Set (`30d`, `12h`, `90m`, seconds): completed processes last changed longer ago than this are deleted by the
    built-in task `task_prune_completed`, on PRUNE_CRON, as `orchestrator db prune` does. Unset: kept for ever."""
    PRUNE_TASKS_ONLY: bool = False
    """The built-in prune deletes completed tasks only (orchestrator-core's `task_clean_up_tasks`)."""
    PRUNE_CRON: str = "0 3 * * *"
    """When the built-in prune runs (five-field cron, UTC)."""

    @field_validator("PRUNE_COMPLETED_OLDER_THAN", mode="before")
    @classmethod
    def _age(cls, value: Any) -> Any:
        return parse_age(value) if isinstance(value, str) and value.strip() else value or None

    @field_validator("PRUNE_CRON")
    @classmethod
    def _cron(cls, value: str) -> str:
        from orchestrator.dsl.schedules import parse_trigger

        parse_trigger("cron", {"expression": value})
        return value

    @field_validator("EXECUTOR", mode="before")
    @classmethod
    def _celery_is_dramatiq(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "celery":
            return ExecutorType.DRAMATIQ
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _level_name(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("BROKER_URL", "CELERY_BROKER_URL")
    @classmethod
    def _amqp_url(cls, value: str | None) -> str | None:
        """Caught here, a bad URL stops the program at start-up instead of failing every publish later."""
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in AMQP_SCHEMES or not url.hostname:
            raise ValueError("must be an AMQP URL such as amqp://user:password@host:5672/vhost")
        try:
            url.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise ValueError(f"must be an AMQP URL with a valid port ({exc})") from None
        return value

    @field_validator("WORKFLOW_MODULES", "CELERY_QUEUES", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("CELERY_QUEUES")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        import re

        for name in value:
            if not re.match(QUEUE_NAME_PATTERN, name):
                raise ValueError(f"invalid queue name {name!r}")
        return value

    @field_validator("TARGET_QUEUES")
    @classmethod
    def _target_queue_names(cls, value: dict[Target, str]) -> dict[Target, str]:
        import re

        for target, name in value.items():
            if not re.match(QUEUE_NAME_PATTERN, name):
                raise ValueError(f"invalid queue name {name!r} for target {target.value}")
        return value

    @field_validator("DATABASE_URI")
    @classmethod
    def _postgres_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URI")
        # orchestrator-core deployments carry a SQLAlchemy driver suffix (postgresql+psycopg://); asyncpg takes none.
        return f"postgresql://{rest}"

    def queue_for(self, *, is_task: bool, target: Target | str | None) -> str:
        """The Dramatiq queue a process is dispatched to: the target override, else tasks or workflows."""
        if target is not None:
            try:
                override = self.TARGET_QUEUES.get(Target(target))
            except ValueError:
                override = None
            if override:
                return override
        return self.TASKS_QUEUE if is_task else self.WORKFLOWS_QUEUE


_AGE_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s` or plain seconds, as a positive timedelta; ValueError otherwise."""
    value = text.strip().lower()
    unit = _AGE_UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"not an age: {text!r} (use e.g. 30d, 12h, 90m or seconds)") from None
    if not 0 < seconds < 100 * 365 * 86400:
        raise ValueError(f"must be a positive age under 100 years, got {text!r}")
    return timedelta(seconds=seconds)


def load_settings(**overrides: Any) -> AppSettings:
    """Read the settings; a bad value raises SettingsError with one line naming the setting."""
    try:
        return AppSettings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        value = error.get("input")
        # URLs and tokens may hold a password: their value is not repeated.
        secret = name.endswith(("_URL", "_URI", "_TOKEN"))
        shown = f" (got {value!r})" if isinstance(value, str | int | float) and not secret else ""
        message = error["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {message}{shown}") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
