"""A small 5-field cron expression (minute hour day-of-month month day-of-week), evaluated in UTC.

Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, and comma lists; months and
weekdays also take three-letter names (``jan``, ``mon``); weekday 0 and 7 are Sunday. As in Vixie cron,
when both day fields are restricted a day matching either one matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from taskq.errors import ConfigError

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
#: (low, high, names starting at low) per field
FIELDS = [(0, 59, None), (0, 23, None), (1, 31, None), (1, 12, MONTHS), (0, 7, DAYS)]
SEARCH_DAYS = 366 * 8  # "30 2 29 2 *" (29 February) is at most 8 years away
MONTH_DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # the most each month can have


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression; :meth:`next_after` and :meth:`last_at_or_before` give its ticks."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month is "*"
    any_weekday: bool  # day-of-week is "*"

    @classmethod
    def parse(cls, expression: str) -> Cron:
        parts = expression.split()
        if len(parts) != 5:
            raise ConfigError(f"cron {expression!r} needs 5 fields (minute hour day month weekday), "
                              f"e.g. '*/5 * * * *'")
        sets = [_field(part, *spec, expression) for part, spec in zip(parts, FIELDS)]
        weekdays = frozenset(d % 7 for d in sets[4])
        if parts[4] == "*" and not any(day <= MONTH_DAYS[month - 1] for month in sets[3] for day in sets[2]):
            raise ConfigError(f"cron {expression!r} never fires: no month it names has such a day")
        return cls(expression, sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, when: datetime) -> datetime:
        """The first tick strictly after ``when`` (an aware datetime; the result is in UTC)."""
        start = when.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(SEARCH_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        tick = day.replace(hour=hour, minute=minute)
                        if tick >= start:
                            return tick
            day += timedelta(days=1)
        raise ConfigError(f"cron {self.expression!r} never fires")

    def last_at_or_before(self, when: datetime) -> datetime:
        """The latest tick at or before ``when`` (UTC)."""
        end = when.astimezone(timezone.utc).replace(second=0, microsecond=0)
        day = end.replace(hour=0, minute=0)
        for _ in range(SEARCH_DAYS):
            if self._day_matches(day):
                for hour in sorted(self.hours, reverse=True):
                    for minute in sorted(self.minutes, reverse=True):
                        tick = day.replace(hour=hour, minute=minute)
                        if tick <= end:
                            return tick
            day -= timedelta(days=1)
        raise ConfigError(f"cron {self.expression!r} never fires")


def _field(text: str, low: int, high: int, names: list[str] | None, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        body, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                first, last = low, high
            elif "-" in body:
                a, b = body.split("-", 1)
                first, last = _value(a, low, names), _value(b, low, names)
            else:
                first = _value(body, low, names)
                last = high if step_text else first
        except ValueError:
            raise ConfigError(f"cron {expression!r}: cannot read {item!r}") from None
        if step < 1 or not (low <= first <= last <= high):
            raise ConfigError(f"cron {expression!r}: {item!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _value(text: str, low: int, names: list[str] | None) -> int:
    if names and text in names:
        return names.index(text) + low
    return int(text)
