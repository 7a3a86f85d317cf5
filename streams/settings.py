"""Processing settings (`[processing]` in the `--config` TOML file) and duration parsing.

Validation happens once at start; each mistake is reported as one readable line naming the
key, so a wrong config never surfaces later as a traceback mid-stream."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.errors import CallstreamError
from streams.events import DEFAULT_MAX_RECORD_BYTES, Category

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, None: 1000, "m": MINUTE_MS, "min": MINUTE_MS, "h": HOUR_MS,
            "d": 24 * HOUR_MS}


class ConfigError(CallstreamError):
    """A mistake in the configuration file."""


def parse_duration_ms(value: object, where: str) -> int:
    """`"90s"`, `"2m"`, `"1h"`, `"24h"`, `"1d"`, or a number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration such as \"2m\" or \"1h\", got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{where}: duration must not be negative, got {value!r}")
        return int(round(value * 1000))
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(round(float(m.group(1)) * _UNIT_MS[m.group(2)]))
    raise ConfigError(f"{where}: bad duration {value!r} (use e.g. \"90s\", \"2m\", \"1h\", \"1d\")")


def format_duration(ms: int) -> str:
    """Compact label for a window length: 900000 -> "15m", 3600000 -> "1h"."""
    for unit, size in (("d", 24 * HOUR_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class RollingWindow:
    """A window of `size_ms` emitted every `every_ms` (a merge of aligned buckets)."""

    name: str
    size_ms: int
    every_ms: int


@dataclass(frozen=True)
class ProcessingSettings:
    clock: str = "arp"                               # "arp" or "connect" (CONTRACT §2)
    arp_cap_ms: dict = field(default_factory=lambda: {
        Category.C1: 30_000, Category.C2: 240_000, Category.C3: 240_000, Category.C4: 240_000})
    allowed_lateness_ms: int = 2 * MINUTE_MS
    episode_horizon_ms: int = 24 * HOUR_MS
    bucket_ms: int = MINUTE_MS
    windows: tuple = (RollingWindow("15m", 15 * MINUTE_MS, 15 * MINUTE_MS),
                      RollingWindow("1h", HOUR_MS, 15 * MINUTE_MS),
                      RollingWindow("24h", 24 * HOUR_MS, HOUR_MS))
    calendar: tuple = ("day", "mtd")                 # calendar day and month-to-date
    timezone: str = "Europe/London"
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    relative_accuracy: float = 0.01

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def with_clock(self, clock: str | None) -> "ProcessingSettings":
        if clock is None or clock == self.clock:
            return self
        return _replace(self, clock=clock)


def _replace(obj, **changes):
    from dataclasses import replace
    return replace(obj, **changes)


_PROCESSING_KEYS = {"clock", "arp_cap", "allowed_lateness", "episode_horizon", "bucket",
                    "windows", "calendar", "timezone", "max_record_bytes", "relative_accuracy"}


def processing_from_table(table: dict, where: str = "[processing]") -> ProcessingSettings:
    """Build settings from the `[processing]` table, one clear error per mistake."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - _PROCESSING_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_PROCESSING_KEYS))})")
    base = ProcessingSettings()
    changes: dict = {}
    if "clock" in table:
        if table["clock"] not in ("arp", "connect"):
            raise ConfigError(f"{where}.clock must be \"arp\" or \"connect\", got {table['clock']!r}")
        changes["clock"] = table["clock"]
    if "arp_cap" in table:
        caps = dict(base.arp_cap_ms)
        cap_table = table["arp_cap"]
        if not isinstance(cap_table, dict):
            raise ConfigError(f"{where}.arp_cap must be a table like {{C1 = \"30s\", C2 = \"240s\"}}")
        for key, value in cap_table.items():
            if key not in Category.__members__:
                raise ConfigError(f"{where}.arp_cap: unknown category {key!r} (C1-C4)")
            caps[Category(key)] = parse_duration_ms(value, f"{where}.arp_cap.{key}")
        changes["arp_cap_ms"] = caps
    for key, attr in (("allowed_lateness", "allowed_lateness_ms"),
                      ("episode_horizon", "episode_horizon_ms"), ("bucket", "bucket_ms")):
        if key in table:
            changes[attr] = parse_duration_ms(table[key], f"{where}.{key}")
    bucket = changes.get("bucket_ms", base.bucket_ms)
    if bucket <= 0 or HOUR_MS % bucket:
        raise ConfigError(f"{where}.bucket must divide one hour (e.g. \"1m\", \"5m\"), got {bucket} ms")
    if changes.get("episode_horizon_ms", 1) <= 0:
        raise ConfigError(f"{where}.episode_horizon must be positive")
    if "windows" in table:
        specs = []
        if not isinstance(table["windows"], list):
            raise ConfigError(f"{where}.windows must be an array of tables")
        for i, w in enumerate(table["windows"]):
            wwhere = f"{where}.windows[{i}]"
            if not isinstance(w, dict) or "size" not in w:
                raise ConfigError(f"{wwhere} needs size (and optionally every, name)")
            size = parse_duration_ms(w["size"], f"{wwhere}.size")
            every = parse_duration_ms(w.get("every", w["size"]), f"{wwhere}.every")
            if every <= 0 or every % bucket or size % every or size <= 0:
                raise ConfigError(f"{wwhere}: size must be a multiple of every, and every a "
                                  f"multiple of the {format_duration(bucket)} bucket")
            specs.append(RollingWindow(str(w.get("name", format_duration(size))), size, every))
        changes["windows"] = tuple(specs)
    if "calendar" in table:
        cal = table["calendar"]
        if not isinstance(cal, list) or any(c not in ("day", "mtd") for c in cal):
            raise ConfigError(f"{where}.calendar must be a list of \"day\" and/or \"mtd\"")
        changes["calendar"] = tuple(cal)
    if "timezone" in table:
        try:
            ZoneInfo(str(table["timezone"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{where}.timezone: unknown time zone {table['timezone']!r}") from None
        changes["timezone"] = str(table["timezone"])
    if "max_record_bytes" in table:
        v = table["max_record_bytes"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 256:
            raise ConfigError(f"{where}.max_record_bytes must be an integer >= 256")
        changes["max_record_bytes"] = v
    if "relative_accuracy" in table:
        v = table["relative_accuracy"]
        if not isinstance(v, float) or not 0 < v < 0.5:
            raise ConfigError(f"{where}.relative_accuracy must be a number in (0, 0.5)")
        changes["relative_accuracy"] = v
    return _replace(base, **changes) if changes else base


def load_config_file(path: str | Path | None) -> dict:
    """Read a TOML config file; missing or malformed files are one-line errors."""
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.__class__.__name__}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None


def load_processing(path: str | Path | None) -> ProcessingSettings:
    doc = load_config_file(path)
    return processing_from_table(doc.get("processing", {}))
