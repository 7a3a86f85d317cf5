"""Event-time parsing and formatting: RFC 3339 or epoch milliseconds in, epoch ms out.

Everything inside callstream is integer epoch milliseconds (UTC), so sums and comparisons
are exact and a replay is byte-identical to a live run. Parsing is on the hot path: the
common `YYYY-MM-DDTHH:MM:SS[.fff]Z` shape takes a cached fast path keyed by its minute."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

#: Accepted event-time range: 2000-01-01 .. 2100-01-01 (anything else is a bad timestamp).
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000

_minute_cache: dict[str, int] = {}
_DIGITS = frozenset("0123456789")


def parse_ts(value: object) -> int | None:
    """Epoch milliseconds from an RFC 3339 string (offset or Z required) or integer ms.

    Returns None for anything unusable (the caller names the rejection reason)."""
    if type(value) is str:
        if len(value) == 24 and value[23] == "Z" and value[10] == "T":
            # Fast path: YYYY-MM-DDTHH:MM:SS.fffZ, minute prefix cached.
            base = _minute_cache.get(value[:16])
            if base is None:
                base = _minute_base(value[:16])
            if base is not None and value[16] == ":" and value[19] == ".":
                digits = value[17:19] + value[20:23]
                if digits.isdigit() and digits.isascii():
                    v = int(digits)
                    if v < 60_000:
                        return base + v
            return None
        return _parse_general(value)
    if type(value) is int:
        if MIN_TS_MS <= value < MAX_TS_MS:
            return value
        return None
    return None


def _minute_base(prefix: str) -> int | None:
    """Epoch ms of a `YYYY-MM-DDTHH:MM` UTC prefix, cached (a month has ~44k minutes)."""
    digits = prefix[:4] + prefix[5:7] + prefix[8:10] + prefix[11:13] + prefix[14:16]
    if not (len(digits) == 12 and digits.isdigit() and digits.isascii() and prefix[4] == "-"
            and prefix[7] == "-" and prefix[13] == ":"):
        return None
    try:
        dt = datetime(int(prefix[:4]), int(prefix[5:7]), int(prefix[8:10]),
                      int(prefix[11:13]), int(prefix[14:16]), tzinfo=timezone.utc)
    except ValueError:
        return None
    ms = int(dt.timestamp()) * 1000
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        return None
    if len(_minute_cache) > 1_000_000:
        _minute_cache.clear()
    _minute_cache[prefix] = ms
    return ms


def _parse_general(value: str) -> int | None:
    if len(value) > 40 or len(value) < 20 or value[10] not in "Tt " or not value.isascii():
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None  # RFC 3339 requires an offset; a bare local time is ambiguous
    ms = round(dt.timestamp() * 1000)
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        return None
    return ms


def format_ts(ms: int) -> str:
    """RFC 3339 UTC with a `Z`; milliseconds only when not whole seconds."""
    sec, frac = divmod(ms, 1000)
    dt = datetime.fromtimestamp(sec, tz=timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:03d}Z" if frac else base + "Z"


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day_start(ms: int, tz: ZoneInfo) -> int:
    """Epoch ms of local midnight at or before `ms` in `tz` (DST-aware)."""
    local = datetime.fromtimestamp(ms / 1000, tz=tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp()) * 1000


def next_local_day_start(day_start_ms: int, tz: ZoneInfo) -> int:
    """Local midnight after the day that starts at `day_start_ms` (23, 24 or 25 hours later)."""
    return local_day_start(day_start_ms + 36 * 3_600_000, tz)


def local_month_start(ms: int, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(ms / 1000, tz=tz)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(first.timestamp()) * 1000


def local_date(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=tz).strftime("%Y-%m-%d")
