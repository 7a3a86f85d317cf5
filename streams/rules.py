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

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Callable, Iterable, NamedTuple

import orjson

from streams.settings import ConfigError, ProcessingSettings, format_duration, parse_duration_ms
from streams.timefmt import format_ts
from streams.windows import ALL, ALL_TRUSTS

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
    s = int(round(seconds))
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
# Lifecycle
# --------------------------------------------------------------------------------------------

PENDING, FIRING, RESOLVING = "pending", "firing", "resolving"


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


def fingerprint(labels: dict) -> str:
    """Stable identity of an alert: a hash of its rule and labels (same across restarts)."""
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class AlertEvaluator:
    """Evaluates the rules at every closed bucket (the `Processor.Rules` hook) and emits
    Alertmanager-style state changes. The live worker and the offline replay use this same
    object, so both raise the same alerts at the same event times."""

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
        """Each trust's call rate from its latest longest-rolling-window totals record (over
        the part of the window since its first call, so a young stream is not underrated)."""
        name, size_ms = self._rate_window
        for rec in records:
            if rec["window"] == name and rec["category"] == ALL:
                first = self._first_seen.get(rec["trust"])
                if first is not None and end > first:
                    self._call_rate[rec["trust"]] = rec["calls"] / min(size_ms, end - first)

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
            factor = 1.0
            rate = self._call_rate.get(t) if rule.usual_gaps else None
            if rate:
                factor = max(1.0, rule.usual_gaps / rate / 1000.0 / self._lowest[rule.name])
            if (v > hi * factor or (live and t in live)) and self._keep(rule, t):
                observations[t] = Observation(v, 1, (ts,))
                if factor > 1.0:
                    levels_for[t] = tuple((sev, h * factor, lo, hc * factor, lc)
                                          for sev, h, lo, hc, lc in self._levels[rule.name])
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
        states = self.states
        name = rule.name
        # "*" sorts before trust codes, so all-trusts alerts come first at equal times
        trusts = sorted(observations) if len(observations) > 1 else observations
        for trust in trusts:
            obs = observations[trust]
            v = obs.value
            critical_active = False
            levels = self._levels[name] if not levels_for or trust not in levels_for \
                else levels_for[trust]
            for sev, hi, lo, hi_clear, lo_clear in levels:
                key = (name, trust, sev)
                st = states.get(key)
                inhibited = critical_active and sev == "warning"
                crossed = hi if v > hi else (lo if v < lo else None)
                if st is None:
                    if crossed is None:
                        continue
                    labels = self._labels(rule, trust, sev)
                    st = states[key] = AlertState(fingerprint(labels), labels, PENDING, end)
                    self._live.setdefault(name, set()).add(trust)
                    st.threshold, st.value, st.obs = crossed, v, obs
                    if rule.for_ms == 0:
                        self._fire(rule, st, end, inhibited, emit)
                elif st.state == PENDING:
                    if crossed is None:
                        self._drop(key)
                        continue
                    st.threshold, st.value, st.obs = crossed, v, obs
                    if end - st.since >= rule.for_ms:
                        self._fire(rule, st, end, inhibited, emit)
                else:                          # firing or resolving
                    st.value, st.obs = v, obs
                    if st.state == FIRING and crossed is not None and st.notified \
                            and not rule.repeat_ms:
                        st.threshold = crossed
                        critical_active = critical_active or sev == "critical"
                        continue               # still breached: the common, quiet case
                    if v <= hi_clear and v >= lo_clear:
                        if st.state == FIRING:
                            st.state, st.since = RESOLVING, end
                        if end - st.since >= rule.resolve_for_ms:
                            self._drop(key)
                            if st.notified:
                                self._notify(rule, st, "resolved", end, emit)
                            continue
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
                if sev == "critical" and st.state != PENDING and key in states:
                    critical_active = True
            if quiet is not None:
                self._note_quiet(rule, trust, levels, quiet)

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
        del self.states[key]
        name, trust, _ = key
        if not any((name, trust, sev) in self.states for sev in SEVERITIES):
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
        unit = rule.info.unit
        value = round(float(st.value), 4 if unit is Unit.SHARE else 3)
        return {
            "fingerprint": st.fingerprint,
            "rule": rule.name,
            "status": status,
            "at": format_ts(end),
            "starts_at": format_ts(st.starts_at if st.starts_at is not None else end),
            "ends_at": format_ts(end) if status == "resolved" else None,
            "labels": st.labels,
            "value": value,
            "threshold": st.threshold,
            "unit": unit.value,
            "sample": st.obs.sample,
            "summary": self.summary(rule, st, status),
            "repeat": st.repeat if status == "firing" else 0,
        }

    def summary(self, rule: Rule, st: AlertState, status: str) -> str:
        """One sentence a dispatcher understands, naming the value, the level and the sample."""
        trust = st.labels["trust"]
        where = _where(trust)
        cat = rule.category
        v, thr, obs = st.value, st.threshold, st.obs
        firing = status == "firing"
        severity = st.labels["severity"]
        level = next(lv for lv in rule.levels if lv.severity == severity)
        m = rule.metric
        if m in (Metric.RESPONSE_MEAN, Metric.RESPONSE_P90):
            what = "mean response" if m is Metric.RESPONSE_MEAN else "90th-centile response"
            noun = "target" if severity == "warning" else "critical level"
            cmp = (f"above the {say_duration(thr)} {noun}" if firing
                   else f"back within the {say_duration(thr)} {noun}")
            win = _say_window(rule.window, obs.record)
            text = f"{cat} {what} {say_duration(v)} {win} {where}, {cmp} ({_plural(obs.sample, 'response')})"
        elif m is Metric.REDIRECT_SHARE:
            win = _say_window(rule.window, obs.record)
            cmp = (f"above the {_say_share(thr)} {severity} level" if firing
                   else f"back under the {_say_share(thr)} {severity} level")
            part = obs.detail[0] if obs.detail else 0
            text = (f"{_say_share(v)} of calls redirected to other services {win} {where}, "
                    f"{cmp} ({part} of {_plural(obs.sample, 'call')})")
        elif m is Metric.HEAR_AND_TREAT_SHARE:
            win = _say_window(rule.window, obs.record)
            band = f"{_say_share(level.low)}-{_say_share(level.high)}"
            cmp = (f"{'below' if thr == level.low else 'above'} the {band} band" if firing
                   else f"back within the {band} band")
            part = obs.detail[0] if obs.detail else 0
            text = (f"Hear-and-treat {_say_share(v)} of calls {win} {where}, {cmp} "
                    f"({part} of {_plural(obs.sample, 'call')})")
        elif m is Metric.C1_REDIRECTED:
            win = _say_window(rule.window, obs.record)
            n = int(v)
            limit = "any is flagged" if thr == 0 else f"{severity} above {int(thr)}"
            text = (f"{_plural(n, 'C1 call')} redirected to other services {win} {where} "
                    f"({limit})" if firing else
                    f"C1 calls redirected to other services {win} {where} down to {n} "
                    f"({limit})")
        elif m is Metric.CALLS_WAITING:
            longest = obs.detail[0] / 1000.0 if obs.detail else 0.0
            n = int(v)
            cmp = (f"above the {severity} level of {int(thr)}" if firing
                   else f"back under the {severity} level of {int(thr)}")
            text = (f"{_plural(n, cat + ' call')} waiting for a crew {where}, {cmp} "
                    f"(longest wait {say_duration(longest)})")
        elif m is Metric.LONGEST_WAIT:
            n = obs.detail[0] if obs.detail else 0
            cmp = (f"past the {say_duration(thr)} {severity} limit" if firing
                   else f"back under the {say_duration(thr)} {severity} limit")
            text = (f"Longest {cat} wait for a crew {say_duration(v)} {where}, {cmp} "
                    f"({_plural(n, cat + ' call')} waiting)")
        else:   # data gap
            last = obs.detail[0] if obs.detail else None
            when = (datetime.fromtimestamp(last / 1000.0, self.tz).strftime("%H:%M %Z, %d %b")
                    if last is not None else "never")
            source = "any trust" if trust == ALL_TRUSTS else trust
            others = "" if trust == ALL_TRUSTS else " while other trusts' calls kept arriving"
            text = (f"No calls received from {source} for {say_duration(v)}{others} "
                    f"(last at {when}); check the feed" if firing else
                    f"Calls from {source} are arriving again (last at {when})")
        return text[0].upper() + text[1:] + "."

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
