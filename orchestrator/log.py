"""Structured logging (structlog): human-readable on a terminal, JSON lines with LOG_FORMAT=json.

Lines about a process carry `process_id` (bound by the runner and the engine).
"""

from __future__ import annotations

import logging
import sys

import structlog

from orchestrator.settings import AppSettings, LogFormat


def configure(log_format: LogFormat = LogFormat.CONSOLE, level: str = "INFO") -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format is LogFormat.JSON
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if log_format is LogFormat.JSON
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (uvicorn, dramatiq, aio-pika) log through the standard library: same format, same stream.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)


def configure_unless_configured(settings: AppSettings) -> bool:
    """Configure from LOG_FORMAT/LOG_LEVEL, as the CLI does, unless the program has set up logging itself
    (structlog configured, or handlers on the root logger): then its choice stands. True if configured here."""
    if structlog.is_configured() or logging.getLogger().handlers:
        return False
    configure(settings.LOG_FORMAT, settings.LOG_LEVEL)
    return True
