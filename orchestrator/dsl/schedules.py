"""Schedules: when a workflow or task is started by the engine itself, on an interval, a cron expression or once.

Triggers take APScheduler's field names (`trigger_kwargs`), as orchestrator-core's `/api/schedules` does, and are
checked when declared: a bad one is a clear `ScheduleError`, never a failure later in the timer loop. The next run
is always the first tick strictly after the moment asked about, so ticks missed while nothing ran are coalesced
into one. Cron expressions are parsed by `cronsim`, in UTC unless a `timezone` is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from orchestrator.dsl.types import State
from orchestrator.exceptions import ScheduleError

TriggerKind = Literal["interval", "cron", "date"]
TRIGGER_KINDS: tuple[TriggerKind, ...] = ("interval", "cron", "date")

_INTERVAL_UNITS = ("weeks", "days", "hours", "minutes", "seconds")
_CRON_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
"""The APScheduler cron fields we map onto a five-field expression, finest first."""
_APS_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _zone(name: Any) -> tzinfo:
    if name is None or name == "UTC":
        return UTC
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"Unknown time zone {name!r}") from None


def _instant(value: Any, zone: tzinfo, what: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ScheduleError(f"{what} must be an ISO 8601 date and time, got {value!r}") from None
    if not isinstance(value, datetime):
        raise ScheduleError(f"{what} must be a date and time, got {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


def _unknown(kind: str, kwargs: Mapping[str, Any], known: Sequence[str]) -> None:
    extra = sorted(set(kwargs) - set(known))
    if extra:
        raise ScheduleError(
            f"Unknown argument(s) for the {kind!r} trigger: {', '.join(extra)} (known: {', '.join(known)})"
        )


@dataclass(frozen=True)
class Trigger:
    """A parsed trigger: `next_after(anchor, moment)` is its first tick strictly after `moment` (None: no more)."""

    kind: TriggerKind
    interval: timedelta | None = None
    start: datetime | None = None
    cron: str | None = None
    zone: tzinfo = UTC

    def first_run(self, now: datetime) -> datetime | None:
        """The first tick of a schedule created `now`: a date already past runs at once."""
        return self.start if self.kind == "date" else self.next_after(now, now)

    def next_after(self, anchor: datetime, moment: datetime) -> datetime | None:
        """`anchor`: when the schedule was created (interval ticks count from it unless `start_date` is given)."""
        if self.kind == "date":
            assert self.start is not None
            return self.start if self.start > moment else None
        if self.kind == "interval":
            assert self.interval is not None
            origin = self.start or anchor
            if origin > moment:
                return origin if self.start is not None else origin + self.interval
            ticks = math.floor((moment - origin) / self.interval) + 1
            return origin + ticks * self.interval
        assert self.cron is not None
        return next(CronSim(self.cron, moment.astimezone(self.zone))).astimezone(UTC)


def _interval(kwargs: Mapping[str, Any]) -> Trigger:
    _unknown("interval", kwargs, (*_INTERVAL_UNITS, "start_date", "timezone"))
    zone = _zone(kwargs.get("timezone"))
    try:
        every = timedelta(**{unit: float(kwargs[unit]) for unit in _INTERVAL_UNITS if unit in kwargs})
    except (TypeError, ValueError, OverflowError):
        raise ScheduleError(f"Interval units ({', '.join(_INTERVAL_UNITS)}) must be numbers") from None
    if every <= timedelta(0):
        raise ScheduleError("An interval trigger needs a positive interval (weeks, days, hours, minutes, seconds)")
    start = _instant(kwargs["start_date"], zone, "start_date") if kwargs.get("start_date") is not None else None
    return Trigger("interval", interval=every, start=start, zone=zone)


def _weekday(value: Any) -> str:
    """APScheduler counts weekdays from Monday = 0, cron from Sunday = 0: numbers are translated, names kept."""
    text = str(value).strip().lower()
    if text.isdigit():
        number = int(text)
        if number > 6:
            raise ScheduleError(f"day_of_week must be 0-6 (Monday = 0) or mon-sun, got {value!r}")
        return _APS_WEEKDAYS[number]
    if any(ch.isdigit() for ch in text):
        raise ScheduleError(f"day_of_week ranges and lists must use names (mon-sun), got {value!r}")
    return text


def _cron_expression(kwargs: Mapping[str, Any]) -> str:
    if "expression" in kwargs:
        return str(kwargs["expression"])
    if str(kwargs.get("second", 0)) not in ("0", "00"):
        raise ScheduleError("Cron triggers run at whole minutes: second must be 0 (use an interval trigger)")
    given = [name for name in _CRON_FIELDS if kwargs.get(name) is not None]
    finest = _CRON_FIELDS.index(given[0]) if given else len(_CRON_FIELDS)
    parts = []
    for i, name in enumerate(_CRON_FIELDS):
        value = kwargs.get(name)
        if value is None:  # APScheduler: fields finer than the finest given one default to their minimum
            value = "0" if i < finest and name in ("minute", "hour") else "*"
        parts.append(_weekday(value) if name == "day_of_week" and value != "*" else str(value))
    return " ".join(parts)


def _cron(kwargs: Mapping[str, Any]) -> Trigger:
    _unknown("cron", kwargs, (*_CRON_FIELDS, "second", "expression", "timezone"))
    zone = _zone(kwargs.get("timezone"))
    expression = _cron_expression(kwargs)
    try:
        next(CronSim(expression, datetime.now(zone)))
    except (CronSimError, StopIteration) as exc:
        raise ScheduleError(f"Invalid cron expression {expression!r}: {exc or 'it never fires'}") from None
    return Trigger("cron", cron=expression, zone=zone)


def _date(kwargs: Mapping[str, Any]) -> Trigger:
    _unknown("date", kwargs, ("run_date", "timezone"))
    if kwargs.get("run_date") is None:
        raise ScheduleError("A date trigger needs run_date")
    zone = _zone(kwargs.get("timezone"))
    return Trigger("date", start=_instant(kwargs["run_date"], zone, "run_date"), zone=zone)


def parse_trigger(kind: str, kwargs: Mapping[str, Any] | None) -> Trigger:
    """Check `kind` and `kwargs` (APScheduler's field names) and return the trigger; raise ScheduleError."""
    if not isinstance(kwargs, Mapping | None):
        raise ScheduleError("trigger_kwargs must be an object")
    parse = {"interval": _interval, "cron": _cron, "date": _date}.get(kind)
    if parse is None:
        raise ScheduleError(f"Invalid trigger {kind!r}: use one of {', '.join(TRIGGER_KINDS)}")
    return parse(kwargs or {})


@dataclass(frozen=True)
class Schedule:
    """A schedule declared in code, next to its workflow (`@workflow(..., schedules=[...])`); upserted at start-up
    under its `name` (by default derived from the workflow and the trigger)."""

    trigger: TriggerKind
    trigger_kwargs: Mapping[str, Any]
    name: str | None = None
    user_inputs: Sequence[State] = field(default_factory=lambda: [{}])
    no_uncompleted_instance: bool = False

    def __post_init__(self) -> None:
        parse_trigger(self.trigger, self.trigger_kwargs)

    def name_for(self, workflow_key: str) -> str:
        if self.name:
            return self.name
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.trigger_kwargs.items()))
        return f"{workflow_key}: {self.trigger}({args})"


def _options(name: str | None, user_inputs: Sequence[State] | None, no_uncompleted_instance: bool) -> dict[str, Any]:
    return {
        "name": name,
        "user_inputs": list(user_inputs) if user_inputs is not None else [{}],
        "no_uncompleted_instance": no_uncompleted_instance,
    }


def Cron(  # noqa: N802  (reads as a type at the call site: schedules=[Cron("0 3 * * *")])
    expression: str,
    *,
    timezone: str = "UTC",
    name: str | None = None,
    user_inputs: Sequence[State] | None = None,
    no_uncompleted_instance: bool = False,
) -> Schedule:
    """Start on a five-field cron expression, in `timezone` (UTC by default)."""
    kwargs = {"expression": expression, "timezone": timezone}
    return Schedule("cron", kwargs, **_options(name, user_inputs, no_uncompleted_instance))


def Interval(  # noqa: N802
    every: timedelta | float,
    *,
    start_date: datetime | None = None,
    name: str | None = None,
    user_inputs: Sequence[State] | None = None,
    no_uncompleted_instance: bool = False,
) -> Schedule:
    """Start every `every` (a timedelta, or seconds), counted from `start_date` or from the schedule's creation."""
    seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
    kwargs: dict[str, Any] = {"seconds": seconds}
    if start_date is not None:
        kwargs["start_date"] = start_date.isoformat()
    return Schedule("interval", kwargs, **_options(name, user_inputs, no_uncompleted_instance))


def Once(  # noqa: N802
    run_date: datetime,
    *,
    name: str | None = None,
    user_inputs: Sequence[State] | None = None,
) -> Schedule:
    """Start once, at `run_date` (naive: UTC)."""
    return Schedule("date", {"run_date": run_date.isoformat()}, **_options(name, user_inputs, False))
