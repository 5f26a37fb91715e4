"""When a group's period ends: the next reset instant after a moment, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from quotaflow.ledger.model import NEVER_MS


def next_reset_ms(period: str, reset_day: int, after_ms: int) -> int:
    """The first period start strictly after `after_ms` (NEVER_MS for period "none").

    monthly: 00:00 UTC on `reset_day` (1..28) of a month; weekly: 00:00 UTC on weekday
    `reset_day` (0 = Monday); daily: every 00:00 UTC.
    """
    if period == "none":
        return NEVER_MS
    now = datetime.fromtimestamp(after_ms / 1000, UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start = midnight + timedelta(days=1)
    elif period == "weekly":
        start = midnight + timedelta(days=(reset_day - now.weekday()) % 7)
        if start <= now:
            start += timedelta(days=7)
    elif period == "monthly":
        start = midnight.replace(day=reset_day)
        if start <= now:
            year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
            start = start.replace(year=year, month=month)
    else:
        raise ValueError(f"unknown period {period!r}")
    return int(start.timestamp() * 1000)
