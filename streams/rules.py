"""Alert rules: response targets, redirect and hear-and-treat shares, pressure, data gaps.

Rules read what the processing core already computes (window records, the pressure of open
calls, each trust's latest call) at every closed bucket, in event time, so a replay raises the
alerts the live system raised, at the same event times. The lifecycle follows Prometheus and
Alertmanager: an alert's identity (fingerprint) is its rule plus labels; it is pending until
its condition has held for `for`, then firing; it resolves only once the value has been back
past its level by a margin for `resolve_for` (hysteresis, so a value hovering at a target does
not flap); only state changes are emitted (plus optional repeats while firing); a critical
alert inhibits the warning of the same rule and labels.

Configuration is the `[alerts]` part of the `--config` TOML file, merged over the shipped
`default_rules.toml`; every mistake is one line naming the key."""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Callable, Iterable, NamedTuple

import numpy as np
import orjson

from streams.fast.alerts import (MARK_HEAD, MARK_LEVEL, MARK_REPLAY, MARK_WITHIN, NEVER,
                                 NO_START, NOT_STARTED, gap_columns, next_stops)
from streams.settings import ConfigError, ProcessingSettings, format_duration, parse_duration_ms
from streams.timefmt import format_ts
from streams.windows import ALL, ALL_TRUSTS, CATEGORY_KEYS, WAIT_CATEGORIES

MINUTE_MS = 60_000


class Metric(StrEnum):
    RESPONSE_MEAN = "response_mean"
    RESPONSE_P90 = "response_p90"
    REDIRECT_SHARE = "redirect_share"
    C1_REDIRECTED = "c1_redirected"
    HEAR_AND_TREAT_SHARE = "hear_and_treat_share"
    CALLS_WAITING = "calls_waiting"
    LONGEST_WAIT = "longest_wait"
    DATA_GAP = "data_gap"


class Unit(StrEnum):
    SECONDS = "seconds"
    SHARE = "share"
    CALLS = "calls"


class Source(StrEnum):
    WINDOW = "window"       # a closed window record
    PRESSURE = "pressure"   # open calls waiting, every bucket
    ACTIVITY = "activity"   # each trust's latest call, every bucket


@dataclass(frozen=True)
class MetricInfo:
    source: Source
    unit: Unit
    categories: tuple[str, ...]     # allowed categories; () = the metric has none
    for_ms: int                      # default `for`
    resolve_for_ms: int              # default `resolve_for`
    scope: tuple[str, ...]           # default scope


_RESPONSE_CATS = ("C1", "C1T", "C2", "C3", "C4")
_WAIT_CATS = ("C1", "C2", "C3", "C4")
_BOTH = ("trusts", "all")
METRICS: dict[Metric, MetricInfo] = {
    Metric.RESPONSE_MEAN: MetricInfo(Source.WINDOW, Unit.SECONDS, _RESPONSE_CATS, 15 * MINUTE_MS, 30 * MINUTE_MS, _BOTH),
    Metric.RESPONSE_P90: MetricInfo(Source.WINDOW, Unit.SECONDS, _RESPONSE_CATS, 15 * MINUTE_MS, 30 * MINUTE_MS, _BOTH),
    Metric.REDIRECT_SHARE: MetricInfo(Source.WINDOW, Unit.SHARE, (), 15 * MINUTE_MS, 30 * MINUTE_MS, _BOTH),
    Metric.C1_REDIRECTED: MetricInfo(Source.WINDOW, Unit.CALLS, (), 0, 30 * MINUTE_MS, _BOTH),
    Metric.HEAR_AND_TREAT_SHARE: MetricInfo(Source.WINDOW, Unit.SHARE, (), 15 * MINUTE_MS, 30 * MINUTE_MS, _BOTH),
    Metric.CALLS_WAITING: MetricInfo(Source.PRESSURE, Unit.CALLS, _WAIT_CATS, 5 * MINUTE_MS, 10 * MINUTE_MS, ("trusts",)),
    Metric.LONGEST_WAIT: MetricInfo(Source.PRESSURE, Unit.SECONDS, _WAIT_CATS, 5 * MINUTE_MS, 10 * MINUTE_MS, ("trusts",)),
    Metric.DATA_GAP: MetricInfo(Source.ACTIVITY, Unit.SECONDS, (), 0, 0, ("trusts",)),
}

SEVERITIES = ("critical", "warning")     # evaluation order: a critical first, so it can inhibit


@dataclass(frozen=True)
class Level:
    """One severity of a rule: fires above `high` or below `low` (a band has both); it
    resolves once the value is back inside by the rule's margin (relative to each bound)."""

    severity: str
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Rule:
    name: str
    metric: Metric
    category: str | None
    window: str | None
    levels: tuple[Level, ...]        # critical before warning
    for_ms: int
    resolve_for_ms: int
    margin: float
    repeat_ms: int
    min_sample: int
    scope: tuple[str, ...]
    trusts: frozenset[str] | None
    every_ms: int = 0                # pressure and activity rules: evaluation interval
    usual_gaps: float = 0.0          # data_gap: never below this many of the trust's usual gaps

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.metric]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

_DEFAULT_KEYS = {"window", "min_sample", "for", "resolve_for", "margin", "repeat_interval", "scope"}
_RULE_KEYS = _DEFAULT_KEYS | {"metric", "category", "warning", "critical", "band", "severity",
                              "trusts", "enabled", "every", "usual_gaps"}
_ALERTS_KEYS = {"include_defaults", "defaults", "rules"}
_BUILTIN_DEFAULTS = {"window": "1h", "min_sample": 20, "margin": 0.05, "repeat_interval": "off"}


def shipped_rules() -> dict:
    """The rules in `streams/default_rules.toml` (national standards and sensible defaults)."""
    text = resources.files("streams").joinpath("default_rules.toml").read_text("utf-8")
    return tomllib.loads(text)["rules"]


def _threshold(value: object, unit: Unit, where: str) -> float:
    """A level in the metric's own kind, or one line saying which kind was expected."""
    if unit is Unit.SECONDS:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: this metric needs a duration such as \"18m\", got {value!r}")
        if value.strip().endswith("%"):
            raise ConfigError(f"{where}: this metric needs a duration such as \"18m\", not a share ({value!r})")
        return parse_duration_ms(value, where) / 1000.0
    if unit is Unit.SHARE:
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("%"):
                try:
                    share = float(text[:-1]) / 100.0
                except ValueError:
                    share = -1.0
            else:
                raise ConfigError(f"{where}: this metric needs a share such as 0.05 or \"5%\", got {value!r}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            share = float(value)
        else:
            raise ConfigError(f"{where}: this metric needs a share such as 0.05 or \"5%\", got {value!r}")
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{where}: a share must be between 0 and 1 (0.05 or \"5%\"), got {value!r}")
        return share
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: this metric needs a whole number of calls such as 10, got {value!r}")
    return float(value)


def _rule_from_table(name: str, table: dict, defaults: dict, windows: set[str],
                     bucket_ms: int, where: str) -> Rule | None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - _RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_RULE_KEYS))})")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled must be true or false")
    if "metric" not in table:
        raise ConfigError(f"{where}: missing metric (one of: {', '.join(m.value for m in Metric)})")
    try:
        metric = Metric(table["metric"])
    except ValueError:
        raise ConfigError(f"{where}.metric: unknown metric {table['metric']!r} "
                          f"(known: {', '.join(m.value for m in Metric)})") from None
    info = METRICS[metric]
    merged = {**_BUILTIN_DEFAULTS, "for": format_duration(info.for_ms) if info.for_ms else "0s",
              "resolve_for": format_duration(info.resolve_for_ms) if info.resolve_for_ms else "0s",
              "scope": list(info.scope), **defaults, **table}

    category = table.get("category")
    if info.categories:
        if category is None:
            raise ConfigError(f"{where}: {metric} needs a category ({', '.join(info.categories)})")
        if category not in info.categories:
            raise ConfigError(f"{where}.category: {category!r} is not one of {', '.join(info.categories)}")
    elif category is not None:
        raise ConfigError(f"{where}.category: {metric} is about all calls and takes no category")

    window = None
    if info.source is Source.WINDOW:
        window = merged["window"]
        if window not in windows:
            raise ConfigError(f"{where}.window: no window named {window!r} is computed "
                              f"(windows: {', '.join(sorted(windows))}; see [processing].windows)")
    elif "window" in table:
        raise ConfigError(f"{where}.window: {metric} is not computed over a window")

    levels = []
    if metric is Metric.HEAR_AND_TREAT_SHARE or "band" in table:
        if metric is not Metric.HEAR_AND_TREAT_SHARE:
            raise ConfigError(f"{where}.band: only hear_and_treat_share takes a band")
        if "warning" in table or "critical" in table:
            raise ConfigError(f"{where}: give either band or warning/critical levels, not both")
        band = table.get("band")
        if not isinstance(band, list) or len(band) != 2:
            raise ConfigError(f"{where}.band must be [low, high], e.g. [\"5%\", \"40%\"]")
        low = _threshold(band[0], info.unit, f"{where}.band[0]")
        high = _threshold(band[1], info.unit, f"{where}.band[1]")
        if low >= high:
            raise ConfigError(f"{where}.band: low must be below high, got {band!r}")
        severity = table.get("severity", "warning")
        if severity not in SEVERITIES:
            raise ConfigError(f"{where}.severity must be \"warning\" or \"critical\"")
        levels.append(Level(severity, low, high))
    else:
        if "severity" in table:
            raise ConfigError(f"{where}.severity: set the level with warning = ... or critical = ...")
        for sev in SEVERITIES:
            if sev in table:
                levels.append(Level(sev, None, _threshold(table[sev], info.unit, f"{where}.{sev}")))
        if not levels:
            raise ConfigError(f"{where}: needs a level: warning = ... and/or critical = ...")
        if len(levels) == 2 and levels[0].high <= levels[1].high:
            raise ConfigError(f"{where}: the critical level must be above the warning level")

    for_ms = parse_duration_ms(merged["for"], f"{where}.for")
    resolve_for_ms = parse_duration_ms(merged["resolve_for"], f"{where}.resolve_for")
    repeat = merged["repeat_interval"]
    repeat_ms = 0 if repeat in ("off", 0) else parse_duration_ms(repeat, f"{where}.repeat_interval")
    margin = merged["margin"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ConfigError(f"{where}.margin must be a fraction in [0, 1), e.g. 0.05, got {margin!r}")
    min_sample = merged["min_sample"]
    if isinstance(min_sample, bool) or not isinstance(min_sample, int) or min_sample < 0:
        raise ConfigError(f"{where}.min_sample must be a whole number >= 0, got {min_sample!r}")
    scope = merged["scope"]
    if isinstance(scope, str):
        scope = [scope]
    if not isinstance(scope, list) or not scope or any(s not in _BOTH for s in scope):
        raise ConfigError(f"{where}.scope must be a list of \"trusts\" and/or \"all\"")
    trusts = table.get("trusts")
    if trusts is not None:
        if not isinstance(trusts, list) or not all(isinstance(t, str) and t for t in trusts):
            raise ConfigError(f"{where}.trusts must be a list of trust codes, e.g. [\"LAS\"]")
        trusts = frozenset(trusts)
    every_ms = 0
    if info.source is not Source.WINDOW:
        every_ms = parse_duration_ms(table.get("every", "1m"), f"{where}.every")
        if every_ms <= 0 or every_ms % bucket_ms or 24 * 3_600_000 % every_ms:
            raise ConfigError(f"{where}.every must be a whole number of {format_duration(bucket_ms)} "
                              f"buckets that divides a day, got {table.get('every')!r}")
    elif "every" in table:
        raise ConfigError(f"{where}.every: {metric} is evaluated whenever its window closes")
    usual_gaps = table.get("usual_gaps", 10 if metric is Metric.DATA_GAP else 0)
    if metric is not Metric.DATA_GAP and "usual_gaps" in table:
        raise ConfigError(f"{where}.usual_gaps: only data_gap takes usual_gaps")
    if isinstance(usual_gaps, bool) or not isinstance(usual_gaps, (int, float)) or usual_gaps < 0:
        raise ConfigError(f"{where}.usual_gaps must be a number >= 0 (0 turns it off)")
    if not enabled:
        return None
    return Rule(name, metric, category, window, tuple(levels), for_ms, resolve_for_ms,
                float(margin), repeat_ms, min_sample,
                tuple(s for s in _BOTH if s in scope), trusts, every_ms, float(usual_gaps))


def load_rules(doc: dict, settings: ProcessingSettings) -> tuple[Rule, ...]:
    """Validated rules from a config document (`[alerts]` merged over the shipped rules)."""
    alerts = doc.get("alerts", {})
    if not isinstance(alerts, dict):
        raise ConfigError("[alerts] must be a table")
    unknown = sorted(set(alerts) - _ALERTS_KEYS)
    if unknown:
        raise ConfigError(f"[alerts]: unknown key {unknown[0]!r} (known: {', '.join(sorted(_ALERTS_KEYS))})")
    include = alerts.get("include_defaults", True)
    if not isinstance(include, bool):
        raise ConfigError("[alerts].include_defaults must be true or false")
    defaults = alerts.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError("[alerts.defaults] must be a table")
    unknown = sorted(set(defaults) - _DEFAULT_KEYS)
    if unknown:
        raise ConfigError(f"[alerts.defaults]: unknown key {unknown[0]!r} "
                          f"(known: {', '.join(sorted(_DEFAULT_KEYS))})")
    user = alerts.get("rules", {})
    if not isinstance(user, dict):
        raise ConfigError("[alerts.rules] must be tables such as [alerts.rules.c2_mean]")
    tables: dict[str, dict] = dict(shipped_rules()) if include else {}
    for name, table in user.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[alerts.rules.{name}] must be a table")
        base = tables.get(name, {})
        if base and "metric" in table and table["metric"] != base.get("metric"):
            base = {}   # a different metric under a shipped name replaces the rule
        tables[name] = {**base, **table}
    windows = {w.name for w in settings.windows} | set(settings.calendar)
    rules = []
    for name, table in tables.items():
        rule = _rule_from_table(name, table, defaults, windows, settings.bucket_ms,
                                f"[alerts.rules.{name}]")
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


# --------------------------------------------------------------------------------------------
# Words for people
# --------------------------------------------------------------------------------------------

def say_duration(seconds: float) -> str:
    """34 min 12 s, 18 min, 2 h 5 min, 45 s."""
    return _say_seconds(int(round(seconds)))


@functools.lru_cache(maxsize=1 << 14)
def _say_seconds(s: int) -> str:
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, r = divmod(s, 3600)
    m = r // 60
    return f"{h} h {m} min" if m else f"{h} h"


def _say_share(v: float) -> str:
    pct = v * 100.0
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 1e-9 else f"{pct:.1f}%"


def _say_window(name: str, rec: dict | None) -> str:
    if name == "day":
        return f"on {rec.get('date') if rec else 'the day'}"
    if name == "mtd":
        return f"this month to {rec.get('date') if rec else 'date'}"
    plain = {"1h": "the last hour", "24h": "the last 24 hours", "1d": "the last day"}
    if name in plain:
        return f"over {plain[name]}"
    if name.endswith("m") and name[:-1].isdigit():
        return f"over the last {name[:-1]} min"
    if name.endswith("h") and name[:-1].isdigit():
        return f"over the last {name[:-1]} hours"
    return f"over the {name} window"


def _where(trust: str) -> str:
    return "across all trusts" if trust == ALL_TRUSTS else f"in {trust}"


def _capital(text: str) -> str:
    """A sentence's first letter in capitals (the rest as it is)."""
    return text[0].upper() + text[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------------------------
# Observations: what a rule sees at one bucket boundary
# --------------------------------------------------------------------------------------------

class Observation(NamedTuple):
    """One value of a rule for one trust, with what a summary needs to explain it."""

    value: float | None          # None: not enough data for a verdict
    sample: int                  # responses or calls behind the value
    detail: tuple = ()
    record: dict | None = None


#: an Observation from a tuple of all four fields (a third of the keyword constructor's time:
#: the batch form makes one per state-machine pass)
_observation = functools.partial(tuple.__new__, Observation)


def _window_observation(rule: Rule, rec: dict | None) -> Observation:
    if rec is None:
        return Observation(None, 0)
    m = rule.metric
    if m is Metric.RESPONSE_MEAN or m is Metric.RESPONSE_P90:
        n = rec.get("count") or 0
        v = rec.get("mean_s") if m is Metric.RESPONSE_MEAN else rec.get("p90_s")
        if not n or v is None or n < rule.min_sample:
            return Observation(None, n, record=rec)
        return Observation(float(v), n, record=rec)
    calls = rec.get("calls", 0)
    if m is Metric.C1_REDIRECTED:
        if calls < rule.min_sample and not rec.get("redirected_c1"):
            return Observation(None, calls, record=rec)
        return Observation(float(rec.get("redirected_c1", 0)), calls, record=rec)
    part = rec.get("redirected", 0) if m is Metric.REDIRECT_SHARE else rec.get("hear_and_treat", 0)
    if not calls or calls < rule.min_sample:
        return Observation(None, calls, record=rec)
    return Observation(part / calls, calls, (part,), rec)


# --------------------------------------------------------------------------------------------
# Columns: what the rules read at a run of boundaries (the columnar engine's form)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedWindows:
    """The figures window rules read from one window's records closed in a batch, by close and
    trust index (index len(trusts) is all trusts): the same numbers as the records' fields."""

    at: np.ndarray            # [close] position of its boundary in the batch
    dates: tuple              # [close] the records' `date` (calendar windows) or None
    count: np.ndarray         # [close, trust, category (CATEGORY_KEYS)] responses
    mean_s: np.ndarray        # [close, trust, category] `mean_s` (NaN without responses)
    p90_s: np.ndarray         # [close, trust, category] `p90_s` (NaN without responses)
    totals: np.ndarray        # [close, trust, 4] calls, hear_and_treat, redirected, redirected_c1
    has_totals: np.ndarray    # [close, trust] whether that totals ("ALL") record exists


@dataclass(frozen=True)
class BoundaryBatch:
    """`AlertEvaluator.evaluate`'s arguments at a run of consecutive boundaries, as columns."""

    ends: np.ndarray          # [m] boundary times (ms)
    trusts: tuple             # trust names by index
    waiting: np.ndarray       # [category (WAIT_CATEGORIES), trust, m] calls waiting for a
    longest_ms: np.ndarray    # crew and the longest wait (ms; 0: none); trust len(trusts) is
    #                           all trusts (the sum of calls, the longest wait)
    last_call: np.ndarray     # [m, trust] time of the trust's latest call (-1: none yet)
    windows: dict             # window name -> ClosedWindows, for `AlertEvaluator.windows_read`


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------

PENDING, FIRING, RESOLVING = "pending", "firing", "resolving"
_FOUND_ORDER = operator.itemgetter(0)     # `_follow`'s sort key: `evaluate`'s order
_NO_RUN = (0, 0.0, 0, NOT_STARTED)
_NO_RUNS = {n: _NO_RUN * n for n in range(len(SEVERITIES) + 1)}


@dataclass(slots=True)
class AlertState:
    """One alert instance (rule + labels + severity) that is pending or firing."""

    fingerprint: str
    labels: dict
    state: str
    since: int                   # pending since, or back inside the level since (resolving)
    starts_at: int | None = None
    notified: bool = False       # its firing was sent (not inhibited)
    last_notified: int = 0
    repeat: int = 0
    threshold: float = 0.0
    value: float = 0.0
    obs: Observation = field(default_factory=lambda: Observation(None, 0))


_DAY_MS = 86_400_000


@functools.lru_cache(maxsize=1 << 10)
def _day_text(day: int) -> str:
    """"YYYY-MM-DDT" of a UTC day (days since the epoch), as `format_ts` writes it."""
    return format_ts(day * _DAY_MS)[:11]


#: "HH:MM:00Z" of each minute of a day (alerts fall on bucket boundaries)
_MINUTE_TEXT = tuple(f"{h:02d}:{m:02d}:00Z" for h in range(24) for m in range(60))


@functools.lru_cache(maxsize=1 << 14)
def _ts_text(ms: int) -> str:
    """`format_ts` for alert records: the date from `format_ts` once per day, the clock by
    arithmetic (the same text; alerts are frequent enough for strftime to show). Cached: a
    resolved record repeats its firing's time, alerts of one boundary share theirs."""
    day, rest = divmod(ms, _DAY_MS)
    if rest % 60_000 == 0:
        return _day_text(day) + _MINUTE_TEXT[rest // 60_000]
    sec, frac = divmod(rest, 1000)
    h, sec = divmod(sec, 3600)
    m, sec = divmod(sec, 60)
    if frac:
        return f"{_day_text(day)}{h:02d}:{m:02d}:{sec:02d}.{frac:03d}Z"
    return f"{_day_text(day)}{h:02d}:{m:02d}:{sec:02d}Z"


#: `next_stops`' scale for levels that do not move (no rows: 1 everywhere), and its fresh
#: watch rows when none changed
_NO_SCALE = _NO_ROWS = np.zeros((0, 0))


def fingerprint(labels: dict) -> str:
    """Stable identity of an alert: a hash of its rule and labels (same across restarts)."""
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class AlertEvaluator:
    """Evaluates the rules at every closed bucket (the `Processor.Rules` hook) and emits
    Alertmanager-style state changes. The live worker and the offline replay use this same
    object, so both raise the same alerts at the same event times: `evaluate` per boundary,
    or `evaluate_batch` for a run of boundaries at once (the columnar replay), which runs the
    same state machine (`_apply`) only where an alert's state can change."""

    def __init__(self, rules: Iterable[Rule], settings: ProcessingSettings,
                 exhaustive: bool = False) -> None:
        """`exhaustive` sends every observation through the state machine, skipping none
        (the plain reference the shortcuts are tested against)."""
        self.rules = tuple(rules)
        self.exhaustive = exhaustive
        self.tz = settings.tz
        self.states: dict[tuple[str, str, str], AlertState] = {}   # (rule, trust, severity)
        self.emitted = 0
        self._window_rules = [r for r in self.rules if r.info.source is Source.WINDOW]
        self._windows = {r.window for r in self._window_rules}
        self._pressure_rules = [r for r in self.rules if r.info.source is Source.PRESSURE]
        self._activity_rules = [r for r in self.rules if r.info.source is Source.ACTIVITY]
        #: per rule, the value past which some level could fire: (lowest high, highest low)
        self._bounds = {r.name: (min((lv.high for lv in r.levels if lv.high is not None),
                                     default=float("inf")),
                                 max((lv.low for lv in r.levels if lv.low is not None),
                                     default=float("-inf"))) for r in self.rules}
        self._lowest = {r.name: min(lv.high for lv in r.levels if lv.high is not None)
                        for r in self._activity_rules}
        if exhaustive:
            self._bounds = {r.name: (float("-inf"), float("inf")) for r in self.rules}
        #: per rule, its levels as plain numbers: (severity, high, low, high clear, low clear)
        inf = float("inf")
        self._levels = {r.name: tuple(
            (lv.severity,
             inf if lv.high is None else lv.high, -inf if lv.low is None else lv.low,
             inf if lv.high is None else lv.high * (1.0 - r.margin),
             -inf if lv.low is None else lv.low * (1.0 + r.margin)) for lv in r.levels)
            for r in self.rules}
        self._pressure_every = math.gcd(*(r.every_ms for r in self._pressure_rules)) or 1
        longest = max(settings.windows, key=lambda w: w.size_ms, default=None)
        self._rate_window = (longest.name, longest.size_ms) if longest else ("", 1)
        self._call_rate: dict[str, float] = {}     # trust -> calls per ms (data-gap rules)
        self._first_seen: dict[str, int] = {}      # trust -> its first call seen
        #: per pressure rule, trust -> value range in which its firing alerts stay unchanged
        self._quiet: dict[str, dict[str, tuple[float, float]]] = {}
        #: per rule, the trusts holding a pending or firing alert
        self._live: dict[str, set[str]] = {}
        self._level_of = {(r.name, lv.severity): lv for r in self.rules for lv in r.levels}
        #: rule -> (its unit's name, the digits its values are rounded to)
        self._unit = {r.name: (r.info.unit.value, 4 if r.info.unit is Unit.SHARE else 3)
                      for r in self.rules}
        #: (rule, trust, severity) -> (fingerprint, labels): an alert's identity, made once
        self._identity: dict[tuple[str, str, str], tuple[str, dict]] = {}
        #: (rule, trust names) -> `_rule_trusts`' answer (the names change only with new trusts)
        self._trusts_of: dict[tuple[str, tuple], tuple] = {}
        #: rule -> `_watch`'s row for a trust without alerts (the same for every trust)
        self._idle: dict[str, list] = {}
        #: (fingerprint, status, threshold) -> its summary's wording (`_phrase`)
        self._phrases: dict[tuple, Callable[[float, Observation], str]] = {}

    def __getstate__(self) -> dict:
        # the live merge snapshots the evaluator; the wording cache holds closures and is
        # rebuilt on demand
        state = dict(self.__dict__)
        state["_phrases"] = {}
        return state

    #: what evaluating changes; the rest is configuration and caches derived from it
    _EVOLVING = ("states", "emitted", "_first_seen", "_call_rate", "_quiet", "_live")

    def evolved(self) -> dict:
        """The state evaluating has changed, for `adopt` (plain data: it pickles)."""
        return {name: self.__dict__[name] for name in self._EVOLVING}

    def adopt(self, evolved: dict) -> None:
        """Take over the state of a copy of this evaluator that went on evaluating elsewhere
        (the replay's rules process): as if this one had evaluated."""
        self.__dict__.update(evolved)

    # -- the hook ----------------------------------------------------------------------
    def evaluate(self, end: int, records: list[dict], pressure: Callable[[], dict],
                 last_call: dict[str, int], emit: Callable[[dict], None]) -> None:
        """Called at every closed bucket. Most boundaries change nothing, so each rule first
        keeps only the trusts whose value could breach a level or that hold an alert; only
        those reach the state machine (this keeps rules a small share of replay time)."""
        if self._activity_rules:
            if len(last_call) != len(self._first_seen):
                for t in last_call.keys() - self._first_seen.keys():
                    self._first_seen[t] = last_call[t]
            if records:
                self._learn_rates(end, records)
        if records and self._window_rules:
            by_window: dict[str, dict[tuple[str, str], dict]] = {}
            for rec in records:
                w = rec["window"]
                if w in self._windows:
                    by_window.setdefault(w, {})[(rec["trust"], rec["category"])] = rec
            if by_window:
                for rule in self._window_rules:
                    index = by_window.get(rule.window)
                    if index is not None:
                        self._window_rule(rule, end, index, emit)
        if self._pressure_rules and end % self._pressure_every == 0:
            by_cat: dict[str, list] = {}      # category -> [[(trust, n, longest)], max n, max longest]
            for (t, c), (n, longest) in pressure().items():
                group = by_cat.get(c)
                if group is None:
                    by_cat[c] = [[(t, n, longest)], n, longest]
                else:
                    group[0].append((t, n, longest))
                    if n > group[1]:
                        group[1] = n
                    if longest > group[2]:
                        group[2] = longest
            for rule in self._pressure_rules:
                if end % rule.every_ms == 0:
                    group = by_cat.get(rule.category)
                    if group is None:
                        if self._live.get(rule.name):
                            self._pressure_rule(rule, end, (), emit)
                        continue
                    top = group[1] if rule.metric is Metric.CALLS_WAITING else group[2] / 1000.0
                    # a sum over trusts can pass a level no single trust passes
                    if top > self._bounds[rule.name][0] or self._live.get(rule.name) \
                            or "all" in rule.scope:
                        self._pressure_rule(rule, end, group[0], emit)
        for rule in self._activity_rules:
            if end % rule.every_ms == 0:
                self._gap_rule(rule, end, last_call, emit)

    # -- the batch form (columnar engine) ------------------------------------------------
    @property
    def pressure_every(self) -> int | None:
        """`evaluate` reads `pressure()` at the boundaries that are multiples of this (None:
        no pressure rule, never)."""
        return self._pressure_every if self._pressure_rules else None

    @property
    def windows_read(self) -> frozenset[str]:
        """The windows whose closed records the rules read (`BoundaryBatch.windows`)."""
        names = set(self._windows)
        if self._activity_rules:
            names.add(self._rate_window[0])
        return frozenset(names)

    def evaluate_batch(self, batch: BoundaryBatch, emit: Callable[[dict], None]) -> None:
        """`evaluate` at every boundary of `batch`, with the same alerts in the same order.

        Per rule and trust, `_watch` says in which range of values, and until when, the next
        evaluations cannot change its alerts; `next_stops` (Numba) finds where the value
        leaves that range or the time comes, and only there does `_apply` run (each rule and
        trust on its own: they share no state). Months of minute boundaries then cost a
        state-machine pass per state change instead of a Python call per boundary."""
        found: list[tuple[int, dict]] = []      # (order key, record): see `_follow`
        self._quiet.clear()        # `evaluate`'s own shortcut: stale once states move here
        factors = self._activity_timeline(batch) if self._activity_rules else {}
        ordered = self._window_rules + self._pressure_rules + self._activity_rules
        skipped_at: dict[int, np.ndarray] = {}
        for order, rule in enumerate(ordered):
            source = rule.info.source
            if source is Source.WINDOW:
                closes = batch.windows.get(rule.window)
                if closes is None or not len(closes.at):
                    continue
                at = closes.at
                keys, values, observe = self._window_columns(rule, batch.trusts, closes)
                scale = levels_at = None
            else:
                at = np.arange(len(batch.ends))
                if source is Source.PRESSURE:
                    keys, values, observe = self._pressure_columns(rule, batch)
                    scale = levels_at = None
                else:
                    columns = self._gap_columns(rule, batch, factors[rule.name])
                    if columns is None:
                        continue
                    keys, values, scale, observe, levels_at = columns
                skipped = skipped_at.get(rule.every_ms)
                if skipped is None:     # boundaries that are not evaluations of the rule
                    skipped = skipped_at[rule.every_ms] = \
                        np.flatnonzero(batch.ends % rule.every_ms != 0)
                if len(skipped):
                    values[:, skipped] = np.nan
            self._follow(rule, order, keys, values, scale, batch.ends[at], at, observe, found,
                         levels_at, len(ordered), len(batch.trusts) + 1)
        found.sort(key=_FOUND_ORDER)
        for _, rec in found:
            emit(rec)

    def _follow(self, rule: Rule, order: int, keys: list[str], values: np.ndarray,
                scale: np.ndarray | None, times: np.ndarray, at: np.ndarray,
                observe: Callable, found: list, levels_at: Callable | None = None,
                n_rules: int = 1, n_trusts: int = 1) -> None:
        """Run `rule`'s lifecycle over the points of `values` ([trust, point]; NaN: no
        verdict there), evaluating only where `_watch` allows a change: `observe(k, x)` is
        the observation there, `levels_at(k, x)` the levels when they move (scaled). Before
        such a point, the levels whose state the skipped points changed (a pending alert
        dropped or begun, a firing one resolving or firing again) are replayed at those
        points alone, except the start of a run still under way there: that level steps at
        the run's start within the point's own pass (`_apply_trust`'s `began`), with the point's
        observation (`next_stops` tells which is which).

        Records go to `found` with one integer for `evaluate`'s order: boundary, then the
        rule's `order` (of `n_rules`), then trust name (a rank among at most `n_trusts`)."""
        n_keys, m = values.shape
        if not n_keys or not m:
            return
        scaled = scale is not None
        if not scaled:
            scale = _NO_SCALE
        levels = self._levels[rule.name]
        n_levels = len(levels)
        watch = np.array([self._watch(rule, trust, scaled) for trust in keys], np.float64)
        fresh = _NO_ROWS                # the watch rows of the keys to do, when they change
        width = watch.shape[1]
        pos = np.full(n_keys, -1, np.int64)
        marks = np.empty((n_keys, MARK_HEAD + MARK_LEVEL * n_levels), np.int64)
        hit_marks = np.empty_like(marks)
        hits = np.arange(n_keys, dtype=np.int64)
        tails = np.empty(n_keys, np.int64)
        todo = hits
        records: list = []              # what one state-machine pass emitted
        emit = records.append
        time_at = times.item
        # the order key: (boundary * n_rules + order) * n_trusts + the trust's rank by name
        per_point = n_rules * n_trusts
        rank = {t: i for i, t in enumerate(sorted(keys))}
        key_base = [order * n_trusts + rank[t] for t in keys]
        apply_trust = self._apply_trust
        watch_of = self._watch

        def replay(k: int, mk: list) -> None:
            """Each level's state change at the points marked to replay, in order."""
            trust = keys[k]
            points = sorted((p, lv) for lv in range(n_levels)
                            for p in mk[MARK_HEAD + MARK_LEVEL * lv:
                                        MARK_HEAD + MARK_LEVEL * lv + 2] if p >= 0)
            for p, lv in points:
                level = (levels if levels_at is None else levels_at(k, p))[lv]
                apply_trust(rule, trust, (level,), time_at(p), observe(k, p), emit)
                if records:         # (none: a replayed change notifies nobody)
                    j = at.item(p) * per_point + key_base[k]
                    found.extend([(j, rec) for rec in records])
                    records.clear()

        while True:
            n_hits, n_tails = next_stops(values, scale, times, watch, fresh, pos, todo, marks,
                                         hits, hit_marks, tails)
            # runs under way at the end of the batch: their state goes on to the next one
            for k in tails[:n_tails].tolist():
                replay(k, marks[k].tolist())
            if not n_hits:
                return
            todo = hits[:n_hits]           # (`next_stops` reads it before writing hits)
            flat: list = []                   # the keys' new watch rows, one after another
            for k, mk in zip(todo.tolist(), hit_marks[:n_hits].tolist()):
                x = mk[0]
                trust = keys[k]
                hints = None
                if mk[1]:
                    if mk[1] & MARK_REPLAY:
                        replay(k, mk)
                    if mk[1] & MARK_WITHIN:
                        hints = mk[MARK_HEAD + 2::MARK_LEVEL]      # times (NO_START: none)
                apply_trust(rule, trust, levels if levels_at is None else levels_at(k, x),
                            time_at(x), observe(k, x), emit, hints)
                if records:
                    j = at.item(x) * per_point + key_base[k]
                    if len(records) == 1:
                        found.append((j, records.pop()))
                    else:
                        found.extend([(j, rec) for rec in records])
                        records.clear()
                flat += watch_of(rule, trust, scaled)
            fresh = np.array(flat, np.float64).reshape(n_hits, width)

    def _watch(self, rule: Rule, trust: str, scaled: bool = False) -> list:
        """Where evaluating `rule` for `trust` can be skipped: low, high, until, then the
        runs, four numbers a level (`next_stops`' watch row).

        While the value v stays in low < v <= high (in the rule's unscaled levels) and the
        time is before `until`, evaluations change nothing but runs: per level, (direction,
        level, duration, since) means values above (1) or at or below (-1) the level for
        `duration` ms (counted from `since` for a run under way) make the next change.

        - no alert or pending: a run above the level for `for` fires it; a shorter run is
          a pending alert dropped again, which leaves no trace;
        - firing or resolving, notified: a run back inside the margin for `resolve_for`
          resolves it; a shorter one fires again, no trace. Runs are replayed level by
          level, without the critical, so an inhibited warning that repeats keeps to plain
          limits instead, like one not yet notified (it waits for its critical);
        - a repeat falls due at `repeat_interval`;
        - nothing can be skipped for an alert that would be notified now, for a band's
          (either side changes it), or for any alert of a rule whose levels move (`scaled`:
          data gaps scaled by call rates, where each evaluation records the level used)."""
        name = rule.name
        live = self._live.get(name)
        held = bool(live) and trust in live
        if not held:
            idle = self._idle.get(name)
            if idle is not None:
                return idle             # no alert: the same row every time
        if self.exhaustive or (scaled and held):
            return self._never(name)
        low, high, until = -math.inf, math.inf, NEVER
        runs = []
        add = runs.extend
        critical_active = False
        for sev, hi, lo, hi_clear, _lo_clear in self._levels[name]:
            st = self.states.get((name, trust, sev))
            if lo != -math.inf:
                if st is not None:
                    return self._never(name)
                low = max(low, math.nextafter(lo, -math.inf))
                high = min(high, hi)
                add(_NO_RUN)
            elif st is None:
                add((1, hi, rule.for_ms, NOT_STARTED))
            elif st.state == PENDING:
                add((1, hi, rule.for_ms, st.since))
            else:
                inhibited = critical_active and sev == "warning"
                if st.notified and not (inhibited and rule.repeat_ms):
                    add((-1, hi_clear, rule.resolve_for_ms,
                         NOT_STARTED if st.state == FIRING else st.since))
                elif not st.notified and not inhibited:
                    return self._never(name)
                else:
                    add(_NO_RUN)
                    if st.state == FIRING:
                        low = max(low, hi_clear)
                    else:
                        high = min(high, hi_clear)
                        until = min(until, st.since + rule.resolve_for_ms)
                if rule.repeat_ms and not inhibited:
                    until = min(until, st.last_notified + rule.repeat_ms)
                if sev == "critical":
                    critical_active = True
        row = [low, high, until, *runs]
        if not held:
            self._idle[name] = row
        return row

    def _never(self, name: str) -> list:
        """A watch row that skips nothing: every point of the key is evaluated."""
        return [math.inf, -math.inf, NEVER, *_NO_RUNS[len(self._levels[name])]]

    def _rule_trusts(self, rule: Rule, names: tuple) -> tuple[list[int] | slice, list[str]]:
        """Trust indexes and names a rule observes (index len(names): all trusts); the
        indexes as a slice where they run on (a view instead of a copy)."""
        key = (rule.name, names)
        known = self._trusts_of.get(key)
        if known is not None:
            return known
        idx = [t for t, name in enumerate(names) if self._keep(rule, name)]
        keys = [names[t] for t in idx]
        if self._keep(rule, ALL_TRUSTS):
            idx.append(len(names))
            keys.append(ALL_TRUSTS)
        if idx and idx == list(range(idx[0], idx[-1] + 1)):
            idx = slice(idx[0], idx[-1] + 1)
        self._trusts_of[key] = idx, keys
        return idx, keys

    def _window_columns(self, rule: Rule, names: tuple, closes: ClosedWindows):
        """A window rule's verdicts by trust and close (`_window_observation` in columns)."""
        idx, keys = self._rule_trusts(rule, names)
        dates = closes.dates
        m = rule.metric
        if m is Metric.RESPONSE_MEAN or m is Metric.RESPONSE_P90:
            c = CATEGORY_KEYS.index(rule.category)
            n = closes.count[:, idx, c]
            v = (closes.mean_s if m is Metric.RESPONSE_MEAN else closes.p90_s)[:, idx, c]
            ok = (n > 0) & (n >= rule.min_sample) & ~np.isnan(v)
            values = np.ascontiguousarray(np.where(ok, v, np.nan).T)

            def observe(k: int, x: int):
                rec = None if dates[x] is None else {"date": dates[x]}
                return _observation((values.item(k, x), n.item(x, k), (), rec))
            return keys, values, observe
        calls = closes.totals[:, idx, 0]
        has = closes.has_totals[:, idx]
        if m is Metric.C1_REDIRECTED:
            part = closes.totals[:, idx, 3]
            ok = has & ~((calls < rule.min_sample) & (part == 0))
            values = np.ascontiguousarray(np.where(ok, part.astype(np.float64), np.nan).T)

            def observe(k: int, x: int):
                rec = None if dates[x] is None else {"date": dates[x]}
                return _observation((float(part.item(x, k)), calls.item(x, k), (), rec))
            return keys, values, observe
        part = closes.totals[:, idx, 2 if m is Metric.REDIRECT_SHARE else 1]
        ok = has & (calls > 0) & (calls >= rule.min_sample)
        values = np.ascontiguousarray(np.where(ok, part / np.maximum(calls, 1), np.nan).T)

        def observe(k: int, x: int):
            rec = None if dates[x] is None else {"date": dates[x]}
            p, n = part.item(x, k), calls.item(x, k)
            return _observation((p / n, n, (p,), rec))
        return keys, values, observe

    def _pressure_columns(self, rule: Rule, batch: BoundaryBatch):
        """A pressure rule's values by trust and boundary (`_pressure_rule` in columns: a
        trust with none waiting counts as 0; all trusts sum the calls, take the longest)."""
        idx, keys = self._rule_trusts(rule, batch.trusts)
        c = WAIT_CATEGORIES.index(rule.category)
        n = batch.waiting[c, idx]
        longest = batch.longest_ms[c, idx]
        if rule.metric is Metric.CALLS_WAITING:
            values = n.astype(np.float64)

            def observe(k: int, x: int):
                calls = n.item(k, x)
                return _observation((float(calls), calls, (longest.item(k, x),), None))
        else:
            values = longest / 1000.0

            def observe(k: int, x: int):       # `_wait_observation`, the value at hand
                calls = n.item(k, x)
                return _observation((values.item(k, x), calls, (calls,), None))
        return keys, values, observe

    def _gap_columns(self, rule: Rule, batch: BoundaryBatch, factors: tuple):
        """A data-gap rule's values by trust and boundary (`_gap_rule` in columns), with each
        trust's level factor per boundary (`factors`: rows by trust, the row of each boundary)
        as the scale of its levels; None when no gap in the batch passes its level and no
        alert is held: then nothing can change (`_gap_rule`'s shortcut, for the whole batch)."""
        last = batch.last_call
        m, nt = last.shape
        idx, keys = self._rule_trusts(rule, batch.trusts)
        if isinstance(idx, slice):
            idx = list(range(nt + 1))[idx]
        if not keys or not m:
            return None
        rows, which = factors
        values = np.empty((len(keys), m))
        scale = np.empty((len(keys), m))
        passes = gap_columns(last, batch.ends, rule.every_ms, rows, which,
                             np.array(idx, np.int64), self._bounds[rule.name][0], values, scale)
        if not passes and not self._live.get(rule.name) and not self.exhaustive \
                and self._bounds[rule.name][1] == -math.inf:
            return None
        idx_of = idx

        def observe(k: int, x: int):
            t = idx_of[k]
            ts = last[x].max() if t == nt else last.item(x, t)
            return _observation((values.item(k, x), 1, (int(ts),), None))

        def levels_at(k: int, x: int) -> tuple:
            factor = scale.item(k, x)
            return self._scaled_levels(rule, factor) if factor > 1.0 else self._levels[rule.name]
        return keys, values, scale, observe, levels_at

    def _activity_timeline(self, batch: BoundaryBatch) -> dict[str, tuple]:
        """What `evaluate` does for data-gap rules before any rule, in boundary order: note
        each trust's first call, learn call rates from the rate window's records (as
        `_learn_rate` at each close, in columns); returns per data-gap rule its level factors
        (`_gap_factor`) as rows by trust and each boundary's row."""
        names = batch.trusts
        last = batch.last_call
        m, nt = last.shape
        seen = last >= 0
        first_x = np.where(seen.any(axis=0), seen.argmax(axis=0), m)   # first boundary seen
        first = last[np.minimum(first_x, max(m - 1, 0)), np.arange(nt)] if m \
            else np.zeros(nt, np.int64)
        for t in range(nt):                        # known before the batch: from the start
            known = self._first_seen.get(names[t])
            if known is not None:
                first_x[t], first[t] = -1, known
        new = sorted((x, t) for t, x in enumerate(first_x.tolist()) if 0 <= x < m)
        prior = np.array([self._call_rate.get(n, np.nan) for n in names], np.float64)
        closes = batch.windows.get(self._rate_window[0])
        if closes is not None and len(closes.at) and nt:
            at = closes.at
            end = batch.ends[at][:, None]
            learn = closes.has_totals[:, :nt] & (first_x[None, :] <= at[:, None]) \
                & (end > first[None, :])
            span = np.minimum(self._rate_window[1], np.where(learn, end - first[None, :], 1))
            rate = closes.totals[:, :nt, 0] / span
            # each trust's rate after each close: the latest one learned (forward fill)
            latest_at = np.maximum.accumulate(
                np.where(learn, np.arange(len(at))[:, None], -1), axis=0)
            cols = np.arange(nt)
            rates = np.vstack((prior, np.where(latest_at >= 0, rate[latest_at, cols],
                                               prior[None, :])))
            which = np.searchsorted(at, np.arange(m), side="right")   # row 0: before any
            learned = latest_at[-1]
            order = sorted((int(np.argmax(learn[:, t])), t) for t in range(nt)
                           if learned[t] >= 0)
            for _, t in order:                     # first learned first, as `_learn_rate`
                self._call_rate[names[t]] = float(rate[learned[t], t])
        else:
            rates = prior[None, :]
            which = np.zeros(m, np.int64)
        for x, t in new:
            self._first_seen[names[t]] = int(first[t])
        out = {}
        for rule in self._activity_rules:
            if not rule.usual_gaps:
                out[rule.name] = np.ones((1, nt)), np.zeros(m, np.int64)
                continue
            ok = rates > 0                         # NaN (no rate) and 0 keep the level
            f = np.where(ok, rule.usual_gaps / np.where(ok, rates, 1.0) / 1000.0
                         / self._lowest[rule.name], 1.0)
            out[rule.name] = np.maximum(f, 1.0), which
        return out

    # -- observations ------------------------------------------------------------------
    def _keep(self, rule: Rule, trust: str) -> bool:
        if trust == ALL_TRUSTS:
            return "all" in rule.scope
        return "trusts" in rule.scope and (rule.trusts is None or trust in rule.trusts)

    def _window_rule(self, rule: Rule, end: int, index: dict, emit) -> None:
        cat = rule.category if rule.category is not None else ALL
        hi, lo = self._bounds[rule.name]
        live = self._live.get(rule.name)
        observations = {}
        for (t, c), rec in index.items():
            if c != cat:
                continue
            obs = _window_observation(rule, rec)
            v = obs.value
            if v is not None and (v > hi or v < lo or (live and t in live)) and self._keep(rule, t):
                observations[t] = obs
        if observations:
            self._apply(rule, end, observations, emit)

    def _pressure_rule(self, rule: Rule, end: int, entries, emit) -> None:
        hi, lo = self._bounds[rule.name]
        live = self._live.get(rule.name)
        quiet = self._quiet.setdefault(rule.name, {})
        waiting_metric = rule.metric is Metric.CALLS_WAITING
        observations = {}
        seen = set()
        total_n, total_longest = 0, 0
        for t, n, longest in entries:
            total_n += n
            if longest > total_longest:
                total_longest = longest
            v = n if waiting_metric else longest / 1000.0
            if live and t in live:
                seen.add(t)
                q = quiet.get(t)
                if q is not None and q[0] < v <= q[1]:
                    continue            # firing, unchanged
            elif not (v > hi or v < lo):
                continue
            if self._keep(rule, t):
                observations[t] = (Observation(v, n, (longest,)) if waiting_metric
                                   else Observation(v, n, (n,)))
        if live:
            for t in live:              # no calls waiting any more: value 0
                if t not in seen and t != ALL_TRUSTS:
                    observations[t] = self._wait_observation(rule, 0, 0)
        if "all" in rule.scope:
            v = total_n if waiting_metric else total_longest / 1000.0
            if live and ALL_TRUSTS in live:
                q = quiet.get(ALL_TRUSTS)
                if q is None or not q[0] < v <= q[1]:
                    observations[ALL_TRUSTS] = self._wait_observation(rule, total_n, total_longest)
            elif v > hi or v < lo:
                observations[ALL_TRUSTS] = self._wait_observation(rule, total_n, total_longest)
        if observations:
            self._apply(rule, end, observations, emit, quiet=None if self.exhaustive else quiet)

    @staticmethod
    def _wait_observation(rule: Rule, n: int, longest_ms: int) -> Observation:
        if rule.metric is Metric.CALLS_WAITING:
            return Observation(float(n), n, (longest_ms,))
        return Observation(longest_ms / 1000.0, n, (n,))

    def _learn_rates(self, end: int, records: list[dict]) -> None:
        """Each trust's call rate from its latest longest-rolling-window totals record."""
        name = self._rate_window[0]
        for rec in records:
            if rec["window"] == name and rec["category"] == ALL:
                self._learn_rate(end, rec["trust"], rec["calls"])

    def _learn_rate(self, end: int, trust: str, calls: int) -> None:
        """Calls per ms over the part of the rate window since the trust's first call, so a
        young stream is not underrated."""
        first = self._first_seen.get(trust)
        if first is not None and end > first:
            self._call_rate[trust] = calls / min(self._rate_window[1], end - first)

    def _gap_factor(self, rule: Rule, trust: str) -> float:
        """How far a trust's gap levels stretch: `usual_gaps` times its usual gap between
        calls, relative to the lowest level (never below 1)."""
        rate = self._call_rate.get(trust) if rule.usual_gaps else None
        if not rate:
            return 1.0
        return max(1.0, rule.usual_gaps / rate / 1000.0 / self._lowest[rule.name])

    def _scaled_levels(self, rule: Rule, factor: float) -> tuple:
        return tuple((sev, h * factor, lo, hc * factor, lc)
                     for sev, h, lo, hc, lc in self._levels[rule.name])

    def _gap_rule(self, rule: Rule, end: int, last_call: dict[str, int], emit) -> None:
        """A trust is silent once its gap passes the level, or `usual_gaps` times its usual
        gap between calls when that is longer: a small trust is quiet at night, not broken.
        A trust's gap runs to the latest call of any trust, not to the clock: when every
        trust stops (a log that ends, a broken consumer) that is the all-trusts gap."""
        if not last_call:
            return
        latest = max(last_call.values())
        hi, _ = self._bounds[rule.name]
        live = self._live.get(rule.name)
        if not live and latest - min(last_call.values()) <= hi * 1000.0 \
                and ("all" not in rule.scope or end - latest <= hi * 1000.0):
            return                      # no trust is past even the unscaled level
        observations = {}
        levels_for = {}
        for t, ts in last_call.items():
            v = (latest - ts) / 1000.0
            factor = self._gap_factor(rule, t)
            if (v > hi * factor or (live and t in live)) and self._keep(rule, t):
                observations[t] = Observation(v, 1, (ts,))
                if factor > 1.0:
                    levels_for[t] = self._scaled_levels(rule, factor)
        if "all" in rule.scope:
            v = (end - latest) / 1000.0
            if v > hi or (live and ALL_TRUSTS in live):
                observations[ALL_TRUSTS] = Observation(v, 1, (latest,))
        if observations:
            self._apply(rule, end, observations, emit, levels_for)

    # -- state machine -----------------------------------------------------------------
    def _apply(self, rule: Rule, end: int, observations: dict[str, Observation],
               emit: Callable[[dict], None], levels_for: dict | None = None,
               quiet: dict | None = None) -> None:
        """Advance the lifecycle of `rule` for the trusts observed (all with a verdict).

        With `quiet`, it also records per trust the value range in which nothing about its
        alerts can change (all firing and notified, no repeats): evaluated every minute, a
        long-firing pressure alert then costs one comparison instead of a state-machine pass."""
        name = rule.name
        # "*" sorts before trust codes, so all-trusts alerts come first at equal times
        trusts = sorted(observations) if len(observations) > 1 else observations
        for trust in trusts:
            levels = self._levels[name] if not levels_for or trust not in levels_for \
                else levels_for[trust]
            self._apply_trust(rule, trust, levels, end, observations[trust], emit)
            if quiet is not None:
                self._note_quiet(rule, trust, levels, quiet)

    def _apply_trust(self, rule: Rule, trust: str, levels: tuple, end: int, obs: Observation,
                     emit: Callable[[dict], None], began: list | None = None) -> None:
        """`_apply` for one trust: its levels in order, critical first (it inhibits the
        warning).

        `began` (the batch form) gives a time per level (NO_START: none): the start of a run
        of values on the same side of that level as now, with no evaluation between that
        changed anything else. The level steps there first, with this observation: it makes
        the change the value made at the start of the run (a pending alert begun, a firing one
        resolving), and the value it stores is replaced at `end` anyway."""
        step = self._step
        critical_active = False
        if began is None:
            for level in levels:
                if step(rule, trust, level, end, obs, critical_active and level[0] == "warning",
                        emit):
                    critical_active = True
            return
        for level, start in zip(levels, began):
            if start != NO_START:
                step(rule, trust, level, start, obs, False, emit)
            if step(rule, trust, level, end, obs, critical_active and level[0] == "warning",
                    emit):
                critical_active = True

    def _step(self, rule: Rule, trust: str, level: tuple, end: int, obs: Observation,
              inhibited: bool, emit: Callable[[dict], None]) -> bool:
        """One level of one alert at one evaluation: the state machine itself. Returns
        whether the level is now an active critical (one that inhibits the warning)."""
        sev, hi, lo, hi_clear, lo_clear = level
        key = (rule.name, trust, sev)
        states = self.states
        st = states.get(key)
        v = obs.value
        crossed = hi if v > hi else (lo if v < lo else None)
        if st is None:
            if crossed is None:
                return False
            ident = self._identity.get(key)
            if ident is None:
                labels = self._labels(rule, trust, sev)
                ident = self._identity[key] = (fingerprint(labels), labels)
            st = states[key] = AlertState(ident[0], ident[1], PENDING, end, None, False, 0, 0,
                                          crossed, v, obs)
            self._live.setdefault(rule.name, set()).add(trust)
            if rule.for_ms == 0:
                self._fire(rule, st, end, inhibited, emit)
        elif st.state == PENDING:
            if crossed is None:
                self._drop(key)
                return False
            st.threshold, st.value, st.obs = crossed, v, obs
            if end - st.since >= rule.for_ms:
                self._fire(rule, st, end, inhibited, emit)
        else:                          # firing or resolving
            st.value, st.obs = v, obs
            if st.state == FIRING and crossed is not None and st.notified \
                    and not rule.repeat_ms:
                st.threshold = crossed
                return sev == "critical"   # still breached: the common, quiet case
            if v <= hi_clear and v >= lo_clear:
                if st.state == FIRING:
                    st.state, st.since = RESOLVING, end
                if end - st.since >= rule.resolve_for_ms:
                    self._drop(key)
                    if st.notified:
                        self._notify(rule, st, "resolved", end, emit)
                    return False
            else:
                st.state = FIRING
                if crossed is not None:
                    st.threshold = crossed
            if not inhibited:
                if not st.notified:
                    self._notify(rule, st, "firing", end, emit)   # its critical has gone
                elif rule.repeat_ms and end - st.last_notified >= rule.repeat_ms:
                    st.repeat += 1
                    self._notify(rule, st, "firing", end, emit)
        return sev == "critical" and st.state != PENDING and key in states

    def _note_quiet(self, rule: Rule, trust: str, levels, quiet: dict) -> None:
        low, high, held = float("-inf"), float("inf"), False
        for sev, hi, _lo, hi_clear, _lc in levels:
            st = self.states.get((rule.name, trust, sev))
            if st is None:
                high = min(high, hi)
            elif st.state == FIRING and st.notified and not rule.repeat_ms:
                held = True
                low = max(low, hi_clear)
            else:
                quiet.pop(trust, None)
                return
        if held:
            quiet[trust] = (low, high)
        else:
            quiet.pop(trust, None)

    def _drop(self, key: tuple[str, str, str]) -> None:
        states = self.states
        del states[key]
        name, trust, _ = key
        for sev in SEVERITIES:
            if (name, trust, sev) in states:
                return
        self._live[name].discard(trust)

    def _fire(self, rule: Rule, st: AlertState, end: int, inhibited: bool,
              emit: Callable[[dict], None]) -> None:
        st.state, st.starts_at = FIRING, end
        if not inhibited:
            self._notify(rule, st, "firing", end, emit)

    def _notify(self, rule: Rule, st: AlertState, status: str, end: int,
                emit: Callable[[dict], None]) -> None:
        st.notified = True
        st.last_notified = end
        self.emitted += 1
        emit(self._record(rule, st, status, end))

    # -- records -----------------------------------------------------------------------
    @staticmethod
    def _labels(rule: Rule, trust: str, severity: str) -> dict:
        labels = {"alertname": rule.name, "trust": trust}
        if rule.category is not None:
            labels["category"] = rule.category
        labels["severity"] = severity
        if rule.window is not None:
            labels["window"] = rule.window
        return labels

    def _record(self, rule: Rule, st: AlertState, status: str, end: int) -> dict:
        unit, digits = self._unit[rule.name]
        value = round(float(st.value), digits)
        at = _ts_text(end)
        return {
            "fingerprint": st.fingerprint,
            "rule": rule.name,
            "status": status,
            "at": at,
            "starts_at": at if st.starts_at is None or st.starts_at == end
            else _ts_text(st.starts_at),
            "ends_at": at if status == "resolved" else None,
            "labels": st.labels,
            "value": value,
            "threshold": st.threshold,
            "unit": unit,
            "sample": st.obs.sample,
            "summary": self.summary(rule, st, status),
            "repeat": st.repeat if status == "firing" else 0,
        }

    def summary(self, rule: Rule, st: AlertState, status: str) -> str:
        """One sentence a dispatcher understands, naming the value, the level and the sample."""
        key = (st.fingerprint, status, st.threshold)     # the fingerprint: rule + labels
        phrase = self._phrases.get(key)
        if phrase is None:
            labels = st.labels
            phrase = self._phrases[key] = self._phrase(rule, labels["trust"],
                                                       labels["severity"], status, st.threshold)
        return phrase(st.value, st.obs)

    def _phrase(self, rule: Rule, trust: str, severity: str, status: str,
                thr: float) -> Callable[[float, Observation], str]:
        """`summary`'s sentence for one alert, status and level: the words fixed, a function
        of the value and observation (alerts are many, their wordings few)."""
        where = _where(trust)
        cat = rule.category
        firing = status == "firing"
        m = rule.metric
        window = rule.window
        if window is not None and window not in ("day", "mtd"):
            fixed = _say_window(window, None)
            win = lambda obs: fixed
        else:
            win = lambda obs: _say_window(window, obs.record)
        if m in (Metric.RESPONSE_MEAN, Metric.RESPONSE_P90):
            what = "mean response" if m is Metric.RESPONSE_MEAN else "90th-centile response"
            noun = "target" if severity == "warning" else "critical level"
            cmp = (f"above the {say_duration(thr)} {noun}" if firing
                   else f"back within the {say_duration(thr)} {noun}")
            head = _capital(f"{cat} {what} ")
            tail = f" {where}, {cmp} ("
            return lambda v, obs: (f"{head}{say_duration(v)} {win(obs)}{tail}"
                                   f"{_plural(obs.sample, 'response')}).")
        if m is Metric.REDIRECT_SHARE:
            cmp = (f"above the {_say_share(thr)} {severity} level" if firing
                   else f"back under the {_say_share(thr)} {severity} level")
            tail = f" {where}, {cmp} ("
            return lambda v, obs: _capital(
                f"{_say_share(v)} of calls redirected to other services {win(obs)}{tail}"
                f"{obs.detail[0] if obs.detail else 0} of {_plural(obs.sample, 'call')}).")
        if m is Metric.HEAR_AND_TREAT_SHARE:
            level = self._level_of[rule.name, severity]
            band = f"{_say_share(level.low)}-{_say_share(level.high)}"
            cmp = (f"{'below' if thr == level.low else 'above'} the {band} band" if firing
                   else f"back within the {band} band")
            tail = f" {where}, {cmp} ("
            return lambda v, obs: (
                f"Hear-and-treat {_say_share(v)} of calls {win(obs)}{tail}"
                f"{obs.detail[0] if obs.detail else 0} of {_plural(obs.sample, 'call')}).")
        if m is Metric.C1_REDIRECTED:
            limit = "any is flagged" if thr == 0 else f"{severity} above {int(thr)}"
            if firing:
                return lambda v, obs: _capital(
                    f"{_plural(int(v), 'C1 call')} redirected to other services {win(obs)} "
                    f"{where} ({limit}).")
            return lambda v, obs: (f"C1 calls redirected to other services {win(obs)} {where} "
                                   f"down to {int(v)} ({limit}).")
        if m is Metric.CALLS_WAITING:
            cmp = (f"above the {severity} level of {int(thr)}" if firing
                   else f"back under the {severity} level of {int(thr)}")
            tail = f" waiting for a crew {where}, {cmp} (longest wait "
            return lambda v, obs: _capital(
                f"{_plural(int(v), cat + ' call')}{tail}"
                f"{say_duration(obs.detail[0] / 1000.0 if obs.detail else 0.0)}).")
        if m is Metric.LONGEST_WAIT:
            cmp = (f"past the {say_duration(thr)} {severity} limit" if firing
                   else f"back under the {say_duration(thr)} {severity} limit")
            head = _capital(f"Longest {cat} wait for a crew ")
            tail = f" {where}, {cmp} ("
            calls = cat + " call"
            return lambda v, obs: (f"{head}{say_duration(v)}{tail}"
                                   f"{_plural(obs.detail[0] if obs.detail else 0, calls)} "
                                   f"waiting).")
        # data gap
        source = "any trust" if trust == ALL_TRUSTS else trust
        others = "" if trust == ALL_TRUSTS else " while other trusts' calls kept arriving"
        tz = self.tz

        def gap(v: float, obs: Observation) -> str:
            last = obs.detail[0] if obs.detail else None
            when = (datetime.fromtimestamp(last / 1000.0, tz).strftime("%H:%M %Z, %d %b")
                    if last is not None else "never")
            return _capital(f"No calls received from {source} for {say_duration(v)}{others} "
                            f"(last at {when}); check the feed." if firing else
                            f"Calls from {source} are arriving again (last at {when}).")
        return gap

    # -- introspection (dashboard, restarts) -------------------------------------------
    def firing(self, end: int | None = None) -> list[dict]:
        """Alerts firing now (notified ones), as firing records: the API's active alerts."""
        rules = {r.name: r for r in self.rules}
        out = []
        for st in self.states.values():
            if st.state != PENDING and st.notified:
                rule = rules[st.labels["alertname"]]
                out.append(self._record(rule, st, "firing", st.last_notified if end is None else end))
        return out

    def snapshot(self) -> bytes:
        """Lifecycle state as bytes (the live worker checkpoints it with its windows)."""
        states = [[list(k), {
            "fingerprint": s.fingerprint, "labels": s.labels, "state": s.state, "since": s.since,
            "starts_at": s.starts_at, "notified": s.notified, "last_notified": s.last_notified,
            "repeat": s.repeat, "threshold": s.threshold, "value": s.value,
            "obs": [s.obs.value, s.obs.sample, list(s.obs.detail)]}] for k, s in self.states.items()]
        return orjson.dumps({"states": states, "first_seen": self._first_seen,
                             "call_rate": self._call_rate, "emitted": self.emitted})

    def restore(self, data: bytes) -> None:
        doc = orjson.loads(data)
        self.states, self._live, self._quiet = {}, {}, {}
        for key, d in doc["states"]:
            obs = d.pop("obs")
            self.states[tuple(key)] = AlertState(**d, obs=Observation(obs[0], obs[1], tuple(obs[2])))
            self._live.setdefault(key[0], set()).add(key[1])
        self._first_seen = dict(doc["first_seen"])
        self._call_rate = dict(doc["call_rate"])
        self.emitted = doc["emitted"]


def build_evaluator(doc: dict, settings: ProcessingSettings) -> AlertEvaluator:
    """The evaluator for a config document (`load_settings_and_rules` calls this)."""
    return AlertEvaluator(load_rules(doc, settings), settings)
