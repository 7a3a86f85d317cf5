"""Synthetic ambulance telemetry: calibrated, scenario-driven, deterministic per seed.

`simulate()` builds every call of the period column-wise with NumPy, then renders JSON Lines
in delivery order, chunk by chunk. What it models, and why:

* Volume: a per-minute rate = calls per day x a diurnal profile (local time, peak ~1.5x and
  trough ~0.45x the hourly mean, the shape seen in real per-incident data) x the scenario.
* Outcomes: redirects at receipt (`answered_by` another service) and at triage
  (`disposition = "redirect"`), hear and treat, and face-to-face responses in the C1-C4 mix.
  Counts are apportioned exactly (largest remainder), not drawn, so a calibrated month has
  the published shares, not shares off by sampling noise.
* Response times: per category, a lognormal fitted to the published mean and 90th centile
  (with its tail stretched where AmbSYS's 90th/mean ratio is beyond any lognormal's), drawn
  by stratified sampling and then pinned to the exact mean and 90th centile; busier minutes
  get the longer times (a rank correlation with the call rate) without changing the
  distribution. Times run from the ARP clock start (the earlier of triage and call connect +
  cap), which is what AmbSYS measures.
* Resources: several per call; C1T comes from the first transport-capable arrival, coupled
  by rank to the C1 time so that it is never earlier.
* Scenarios (`SCENARIOS`): winter surge, major incident, data gap; see `Scenario`.
* Delivery faults (`Disorder`): late within / beyond the lateness bound, duplicates, and
  extra malformed records (each a corrupted copy of a real event, so the clean events are the
  same with or without faults). Faults use their own random stream: the same seed gives the
  same calls whatever the fault rates.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from statistics import NormalDist
from typing import Iterator
from zoneinfo import ZoneInfo

import numpy as np

from streams.errors import CallstreamError

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

CATEGORIES = ("C1", "C2", "C3", "C4")
RESPONSE_KEYS = ("C1", "C1T", "C2", "C3", "C4")
#: ARP clock-start caps (CONTRACT §2 defaults), C1..C4, in ms.
ARP_CAP_MS = np.array([30_000, 240_000, 240_000, 240_000], dtype=np.int64)

# outcome codes of a call
DISPATCH, HEAR_AND_TREAT, REDIRECT_TRIAGE, REDIRECT_RECEIPT = 0, 1, 2, 3
# event kinds (same order as streams.events.EventType)
RECEIVED, TRIAGED, ARRIVED = 0, 1, 2
NO_CATEGORY = 4

#: Relative call volume at the start of each local hour (0h..23h); interpolated per minute
#: and normalised so a day averages 1.
DIURNAL_HOURLY = np.array([0.80, 0.66, 0.57, 0.51, 0.48, 0.49, 0.57, 0.77, 1.00, 1.17, 1.28,
                           1.35, 1.40, 1.45, 1.50, 1.56, 1.62, 1.63, 1.55, 1.40, 1.26, 1.12,
                           0.99, 0.89])

#: Default performance (England, winter 2025/26): category -> (mean s, 90th centile s).
DEFAULT_RESPONSE = {"C1": (488.0, 867.0), "C1T": (600.0, 1087.0), "C2": (2104.0, 4433.0),
                    "C3": (7854.0, 18129.0), "C4": (9944.0, 23863.0)}

#: Where mutual aid comes from: a neighbouring service (geographic, approximate).
NEIGHBOUR = {"LAS": "SECAMB", "SECAMB": "LAS", "EEAST": "LAS", "EMAS": "EEAST", "YAS": "NEAS",
             "NEAS": "YAS", "NWAS": "YAS", "WMAS": "EMAS", "SWASFT": "SCAS", "SCAS": "SECAMB",
             "IOW": "SCAS"}

#: No simulated response takes longer (below the processor's 24-hour episode horizon).
MAX_RESPONSE_S = 23 * 3600.0

_INV_NORMAL = NormalDist().inv_cdf
_Z90 = NormalDist().inv_cdf(0.9)


# -- profiles ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustProfile:
    """Demand and performance of one trust (times in seconds).

    `calls_per_day` counts every call received, redirected ones included; `hear_and_treat`
    is the share of incidents (calls not redirected) closed by phone; `category_share` is the
    C1-C4 mix of face-to-face incidents; `mean_p90_s` has C1, C1T, C2, C3, C4."""

    code: str
    calls_per_day: float
    category_share: tuple = (0.127, 0.645, 0.219, 0.009)
    hear_and_treat: float = 0.18
    redirect_at_receipt: float = 0.005
    redirect_by_triage: float = 0.005
    mean_p90_s: dict = field(default_factory=lambda: dict(DEFAULT_RESPONSE))
    c1_transport: float = 0.65        # C1 incidents with a transport-capable arrival (A9/A8)
    nature_of_call_s: float = 40.0    # mean time to triage (AmbSYS A15)
    timezone: str = "Europe/London"


#: England's trusts with a share of national demand (about 27k calls a day in 2025/26).
ENGLAND = (("LAS", 0.165), ("NWAS", 0.145), ("YAS", 0.115), ("WMAS", 0.12), ("EEAST", 0.11),
           ("EMAS", 0.09), ("SWASFT", 0.09), ("SECAMB", 0.08), ("SCAS", 0.07), ("NEAS", 0.05),
           ("IOW", 0.004))


def england(calls_per_day: float = 27_300.0) -> list[TrustProfile]:
    """All English trusts with default performance, volume split by their usual shares."""
    total = sum(s for _, s in ENGLAND)
    return [TrustProfile(code, calls_per_day * s / total) for code, s in ENGLAND]


def default_profile(code: str) -> TrustProfile:
    """A trust with default performance and about its real volume (5 % of England if unknown)."""
    shares = dict(ENGLAND)
    total = sum(shares.values())
    return TrustProfile(code, 27_300.0 * shares.get(code, 0.05 * total) / total)


def calibrated(figures, redirect_at_receipt: float = 0.005,
               redirect_by_triage: float = 0.005) -> TrustProfile:
    """A profile reproducing one published AmbSYS month (`producers.ambsys.MonthFigures`).

    Incidents per day = A7 / days; face-to-face incidents (A56) take the C1-C4 mix of
    A8/A10/A11/A12 (AmbSYS counts ~7 % of them in no category), so hear and treat stays
    A17 / A7. Redirects are extra calls on top (AmbSYS has no indicator for them)."""
    counts = [figures.counts[c] for c in CATEGORIES]
    total = sum(counts)
    redirects = redirect_at_receipt + redirect_by_triage
    return TrustProfile(
        code=figures.trust,
        calls_per_day=figures.incidents_per_day / (1.0 - redirects),
        category_share=tuple(c / total for c in counts),
        hear_and_treat=figures.hear_and_treat / figures.incidents,
        redirect_at_receipt=redirect_at_receipt, redirect_by_triage=redirect_by_triage,
        mean_p90_s=dict(figures.response_s),
        c1_transport=figures.c1t / figures.counts["C1"] if figures.counts["C1"] else 0.0,
        nature_of_call_s=float(figures.nature_of_call_s or 40.0))


def like(trust: str, month: str | None = None) -> list[TrustProfile]:
    """Profiles calibrated from AmbSYS: one trust (`"LAS"`) or all of England (`"england"`).

    `month` is "YYYY-MM"; default the latest month the data holds for that trust."""
    from producers import ambsys
    month = month or ambsys.latest_month(trust)
    if trust.strip().lower() == ambsys.ENGLAND:
        return [calibrated(f) for f in ambsys.england_months(month)]
    return [calibrated(ambsys.month_figures(trust, month))]


# -- scenarios ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """Departures from normal over the simulated period; times are fractions of the period.

    Winter surge (all trusts): a strength rising smoothly from 0 to 1 between `ramp[0]` and
    `ramp[1]` adds `surge_volume` to the call rate, `surge_response[i]` to the response-time
    factor of C1..C4, `surge_redirect` to the redirect share (half at receipt, half at triage,
    every category including C1) and `surge_hear_and_treat` to hear and treat.
    Major incident (the `target` trust, default the first): from `incident_at`, extra calls at
    `incident_peak` x the normal rate decaying with `incident_decay_min`, in `incident_mix`,
    and response times up to (1 + `incident_strain`) x for about `incident_strain_hours`.
    Data gap (the `target` trust): no events at all with times in `gap_hours` from `gap_at`."""

    name: str = "normal"
    ramp: tuple = (0.15, 0.75)
    surge_volume: float = 0.0
    surge_response: tuple = (0.0, 0.0, 0.0, 0.0)
    surge_redirect: float = 0.0
    surge_hear_and_treat: float = 0.0
    target: str | None = None
    incident_at: float | None = None
    incident_peak: float = 8.0
    incident_decay_min: float = 20.0
    incident_mix: tuple = (0.35, 0.5, 0.15, 0.0)
    incident_strain: float = 0.8
    incident_strain_hours: float = 3.0
    gap_at: float | None = None
    gap_hours: float = 2.0


SCENARIOS = {
    "normal": Scenario(),
    "winter-surge": Scenario("winter-surge", surge_volume=0.25,
                             surge_response=(0.3, 1.6, 1.0, 1.0), surge_redirect=0.13,
                             surge_hear_and_treat=0.04),
    "major-incident": Scenario("major-incident", incident_at=0.4),
    "data-gap": Scenario("data-gap", gap_at=0.4),
}


def scenario_named(scenario: str | Scenario) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    try:
        return SCENARIOS[scenario]
    except KeyError:
        raise CallstreamError(f"unknown scenario {scenario!r}; choose one of "
                              f"{', '.join(SCENARIOS)}") from None


@dataclass(frozen=True)
class Disorder:
    """Delivery faults, as shares of the events: delayed within / beyond the lateness bound,
    delivered twice, and extra malformed records."""

    within_lateness: float = 0.0
    lateness_ms: int = 120_000
    beyond_lateness: float = 0.0
    duplicates: float = 0.0
    malformed: float = 0.0

    def __post_init__(self):
        for name in ("within_lateness", "beyond_lateness", "duplicates", "malformed"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise CallstreamError(f"{name.replace('_', ' ')} must be a share between 0 and "
                                      f"1, got {v}")
        if self.within_lateness + self.beyond_lateness > 1.0:
            raise CallstreamError("late shares within and beyond the lateness add up to more "
                                  "than 1")
        if self.lateness_ms <= 0:
            raise CallstreamError("lateness must be positive")


# -- response-time distributions ---------------------------------------------------------------
class ResponseDistribution:
    """A response-time law with a given mean and 90th centile (seconds), bounded above.

    Below the 90th centile a lognormal through it (sigma from the lognormal that also has the
    mean, when one exists: 90th/mean <= e^(z^2/2) ~ 2.27; else z); above it an exponential
    tail whose scale makes the mean exact. AmbSYS C3/C4 months often have 90th/mean of
    2.3-4, which needs that freedom. Draws are capped at `MAX_RESPONSE_S` (a call is always
    reached within the processor's default 24-hour horizon)."""

    def __init__(self, mean: float, p90: float) -> None:
        if not (mean > 0 and p90 > 0):
            raise CallstreamError(f"response times must be positive (mean {mean}, 90th {p90})")
        self.mean, self.p90 = float(mean), float(p90)
        c = math.log(p90 / mean)                       # = z*s - s^2/2 for a lognormal
        disc = _Z90 * _Z90 - 2.0 * c
        s = max(_Z90 - math.sqrt(disc), 0.02) if disc > 0 else _Z90
        floor = 0.1 * p90
        if self._theta(s) < floor:                     # the body must spread further down
            lo, hi = s, 6.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if self._theta(mid) < floor else (lo, mid)
            s = hi
        self.sigma = s
        self.mu = math.log(p90) - _Z90 * s
        self.theta = max(self._theta(s), floor)

    def _theta(self, s: float) -> float:
        """Scale of the exponential tail that gives the mean, for a body of sigma s."""
        q = self.p90
        body = q * math.exp(-_Z90 * s + s * s / 2) * NormalDist().cdf(_Z90 - s)
        return (self.mean - body) / 0.1 - q

    def quantile(self, u: np.ndarray) -> np.ndarray:
        u = np.clip(u, 1e-12, 1 - 1e-12)
        z = np.array([_INV_NORMAL(x) for x in np.minimum(u, 0.9).tolist()])
        body = np.exp(self.mu + self.sigma * z)
        tail = self.p90 + self.theta * np.log(0.1 / (1 - np.maximum(u, 0.9)))
        return np.minimum(np.where(u > 0.9, tail, body), MAX_RESPONSE_S)

    def sample_sorted(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n values, ascending, by stratified sampling, pinned to the exact mean and 90th."""
        if n == 0:
            return np.zeros(0)
        u = (np.arange(n) + rng.random(n)) / n
        return pin_mean_p90(self.quantile(u), self.mean, self.p90)


def pin_mean_p90(values: np.ndarray, mean: float, p90: float,
                 cap: float = None) -> np.ndarray:
    """Sorted values rescaled so that numpy's 90th percentile and the mean are exact.

    Scaling fixes the 90th centile; the values above the ones it interpolates between are
    then stretched about the last of those (order kept) to fix the mean, within `cap`
    (default `MAX_RESPONSE_S`). Samples under 10 values are left as drawn."""
    cap = MAX_RESPONSE_S if cap is None else cap
    v = np.sort(values)
    n = len(v)
    if n < 10:
        return np.minimum(v, cap)
    q = np.percentile(v, 90)
    if q > 0:
        v = v * (p90 / q)
    j = math.ceil(0.9 * (n - 1))
    for _ in range(4):           # stretching, then capping, converges in a few rounds
        if j + 1 >= n:
            break
        pivot = v[j]
        excess = float((v[j + 1:] - pivot).sum())
        need = n * mean - float(v.sum())
        if excess <= 0 or abs(need) < 1e-9 * n * mean:
            break
        d = 1.0 + need / excess
        if d <= 0.05:
            break
        v[j + 1:] = np.minimum(pivot + d * (v[j + 1:] - pivot), max(cap, pivot))
    return v


# -- helpers -----------------------------------------------------------------------------------
def apportion(total: int, shares) -> np.ndarray:
    """Integer counts summing to `total` in the given proportions (largest remainder)."""
    w = np.asarray(shares, dtype=float)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
    raw = w * total
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def choose_exact(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly k items drawn without replacement with probability ~ weight."""
    n = len(weights)
    mask = np.zeros(n, bool)
    k = min(max(int(k), 0), int((weights > 0).sum()))
    if k == 0:
        return mask
    with np.errstate(divide="ignore"):
        keys = np.log(rng.random(n)) / np.where(weights > 0, weights, 1.0)
    keys[weights <= 0] = -np.inf
    mask[np.argpartition(-keys, k - 1)[:k]] = True
    return mask


def diurnal_minutes(start_ms: int, minutes: int, tz_name: str) -> np.ndarray:
    """Relative call rate for each minute from `start_ms` (local time of `tz_name`)."""
    tz = ZoneInfo(tz_name)
    first_hour = start_ms // HOUR_MS
    n_hours = (minutes + 59) // 60 + 2
    offsets = np.array([
        int(datetime.fromtimestamp((first_hour + h) * 3600, tz=timezone.utc)
            .astimezone(tz).utcoffset().total_seconds()) * 1000 for h in range(n_hours)],
        dtype=np.int64)
    t = start_ms + np.arange(minutes, dtype=np.int64) * MINUTE_MS + MINUTE_MS // 2
    local = t + offsets[(t // HOUR_MS) - first_hour]
    hour_f = (local % DAY_MS) / HOUR_MS
    shape = np.append(DIURNAL_HOURLY, DIURNAL_HOURLY[0])
    # hourly points sit at the middle of each hour
    pos = (hour_f - 0.5) % 24.0
    i = np.floor(pos).astype(np.int64)
    frac = pos - i
    rate = shape[i] * (1 - frac) + shape[i + 1] * frac
    return rate / _DIURNAL_DAY_MEAN


def _day_mean() -> float:
    shape = np.append(DIURNAL_HOURLY, DIURNAL_HOURLY[0])
    pos = (np.arange(1440) + 0.5) / 60.0
    pos = (pos - 0.5) % 24.0
    i = np.floor(pos).astype(int)
    f = pos - i
    return float((shape[i] * (1 - f) + shape[i + 1] * f).mean())


_DIURNAL_DAY_MEAN = _day_mean()


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _trust_rng(seed: int, code: str) -> np.random.Generator:
    """One stream per (seed, trust): a trust's calls do not depend on which others are in."""
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, zlib.crc32(code.encode())])


# -- the simulation ----------------------------------------------------------------------------
@dataclass
class _Calls:
    """Column-wise calls of one trust (times in epoch ms)."""

    recv: np.ndarray
    outcome: np.ndarray        # DISPATCH, HEAR_AND_TREAT, REDIRECT_TRIAGE, REDIRECT_RECEIPT
    category: np.ndarray       # 0..3, NO_CATEGORY
    triage: np.ndarray
    arr_call: np.ndarray       # arrivals: call index, time, transport-capable, resource number
    arr_ts: np.ndarray
    arr_tc: np.ndarray
    arr_res: np.ndarray


class SimulatedLog:
    """A generated event log: `lines()` renders JSON Lines (bytes, no newline) in delivery
    order; `counts` says what went into it (events by type, duplicates, malformed, ...)."""

    def __init__(self, codes: list[str], call_ids_prefix: list[str], answered_by: list[str],
                 ev_ts, ev_kind, ev_call, ev_extra, call_trust, call_num, slots, variants,
                 counts: dict) -> None:
        self.codes = codes
        self._prefix = call_ids_prefix
        self._answered_by = answered_by
        self.ev_ts, self.ev_kind, self.ev_call, self.ev_extra = ev_ts, ev_kind, ev_call, ev_extra
        self.call_trust, self.call_num = call_trust, call_num
        self.slots, self.variants = slots, variants
        self.counts = counts

    def __len__(self) -> int:
        return len(self.slots)

    def lines(self, chunk: int = 100_000) -> Iterator[bytes]:
        for start in range(0, len(self.slots), chunk):
            yield from self._render(self.slots[start:start + chunk],
                                    self.variants[start:start + chunk])

    def _render(self, slots: np.ndarray, variants: np.ndarray) -> list[bytes]:
        ts = np.datetime_as_string(self.ev_ts[slots].astype("datetime64[ms]"), unit="ms").tolist()
        kinds = self.ev_kind[slots].tolist()
        extras = self.ev_extra[slots].tolist()
        calls = self.ev_call[slots]
        trusts = self.call_trust[calls].tolist()
        nums = self.call_num[calls].tolist()
        var = variants.tolist()
        codes, prefix, aid = self.codes, self._prefix, self._answered_by
        out = []
        append = out.append
        for i in range(len(kinds)):
            t = trusts[i]
            cid = f"{prefix[t]}{nums[i]:07d}"
            k = kinds[i]
            e = extras[i]
            if k == RECEIVED:
                extra = f',"answered_by":"{aid[t]}"' if e else ""
                line = (f'{{"type":"call_received","call_id":"{cid}","ts":"{ts[i]}Z",'
                        f'"trust":"{codes[t]}"{extra}}}')
            elif k == TRIAGED:
                d, c = divmod(e, 8)
                cat = f',"category":"{CATEGORIES[c]}"' if c != NO_CATEGORY else ""
                if d == DISPATCH:
                    tail = ',"disposition":"dispatch"'
                elif d == HEAR_AND_TREAT:
                    tail = ',"disposition":"hear_and_treat"'
                else:
                    tail = f',"disposition":"redirect","redirect_to":"{aid[t]}"'
                line = (f'{{"type":"triaged","call_id":"{cid}","ts":"{ts[i]}Z",'
                        f'"trust":"{codes[t]}"{cat}{tail}}}')
            else:
                tc = e & 1
                line = (f'{{"type":"crew_arrived","call_id":"{cid}","ts":"{ts[i]}Z",'
                        f'"trust":"{codes[t]}","resource_id":"{codes[t]}-{"A" if tc else "R"}'
                        f'{e >> 1:04d}","transport_capable":{"true" if tc else "false"}}}')
            raw = line.encode()
            v = var[i]
            if v >= 2:
                raw = corrupt(raw, v - 2)
            append(raw)
        return out


#: Kinds of malformed record and the dead-letter reason the processor gives each.
MALFORMED_KINDS = ("malformed_json", "malformed_json", "unknown_type", "bad_timestamp",
                   "missing_field", "not_an_object", "bad_field")


def corrupt(raw: bytes, kind: int) -> bytes:
    """A broken copy of a good record (kind indexes MALFORMED_KINDS)."""
    if kind == 0:                                   # cut off mid-record
        return raw[: max(1, len(raw) * 2 // 3)]
    if kind == 1:                                   # not UTF-8 JSON at all
        return b"\xff\xfe" + raw[2:]
    if kind == 2:                                   # misspelt event type
        return raw.replace(b'"type":"', b'"type":"x', 1)
    if kind == 3:                                   # impossible month in the timestamp
        i = raw.find(b'"ts":"')
        return raw[: i + 11] + b"13" + raw[i + 13:]
    if kind == 4:                                   # call_id dropped
        return raw.replace(b'"call_id":"', b'"call":"', 1)
    if kind == 5:                                   # an array, not an object
        return b"[" + raw + b"]"
    return raw.replace(b'"trust":"', b'"trust":"' + b"X" * 16, 1)   # trust too long


def simulate(trusts: list[TrustProfile], start_ms: int, days: float, seed: int = 0,
             disorder: Disorder = Disorder(), id_prefix: str = "",
             scenario: str | Scenario = "normal") -> SimulatedLog:
    """Generate calls for `trusts` over [start_ms, start_ms + days) and plan their delivery."""
    if days <= 0:
        raise CallstreamError("the simulated period must be positive")
    if not trusts:
        raise CallstreamError("no trusts to simulate")
    sc = scenario_named(scenario)
    span_ms = int(round(days * DAY_MS))
    minutes = max(1, -(-span_ms // MINUTE_MS))
    frac = (np.arange(minutes) + 0.5) / minutes
    strength = _smoothstep((frac - sc.ramp[0]) / max(1e-9, sc.ramp[1] - sc.ramp[0])) \
        if sc.surge_volume or sc.surge_redirect or any(sc.surge_response) \
        or sc.surge_hear_and_treat else np.zeros(minutes)
    codes = [t.code for t in trusts]
    target = sc.target if sc.target is not None else codes[0]
    if (sc.incident_at is not None or sc.gap_at is not None) and target not in codes:
        raise CallstreamError(f"scenario target {target!r} is not among the simulated trusts")

    day_tag = datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc).strftime("%y%m%d")
    per_trust = []
    for t_index, tp in enumerate(trusts):
        rng = _trust_rng(seed, tp.code)
        calls = _simulate_trust(tp, start_ms, minutes, span_ms, strength, sc,
                                tp.code == target, rng)
        per_trust.append(calls)

    # -- assemble events ------------------------------------------------------------------
    ev_ts, ev_kind, ev_call, ev_extra = [], [], [], []
    call_trust, call_num = [], []
    offset = 0
    counts = {"calls": 0, "hear_and_treat": 0, "redirected_at_receipt": 0,
              "redirected_at_triage": 0, "dispatched": 0}
    for t_index, c in enumerate(per_trust):
        n = len(c.recv)
        call_trust.append(np.full(n, t_index, np.int16))
        call_num.append(np.arange(1, n + 1, dtype=np.int64))
        idx = np.arange(offset, offset + n, dtype=np.int64)
        counts["calls"] += n
        counts["hear_and_treat"] += int((c.outcome == HEAR_AND_TREAT).sum())
        counts["redirected_at_receipt"] += int((c.outcome == REDIRECT_RECEIPT).sum())
        counts["redirected_at_triage"] += int((c.outcome == REDIRECT_TRIAGE).sum())
        counts["dispatched"] += int((c.outcome == DISPATCH).sum())
        # call_received
        ev_ts.append(c.recv)
        ev_kind.append(np.full(n, RECEIVED, np.int8))
        ev_call.append(idx)
        ev_extra.append((c.outcome == REDIRECT_RECEIPT).astype(np.int32))
        # triaged (not for calls handed over at receipt)
        tm = c.outcome != REDIRECT_RECEIPT
        ev_ts.append(c.triage[tm])
        ev_kind.append(np.full(int(tm.sum()), TRIAGED, np.int8))
        ev_call.append(idx[tm])
        ev_extra.append((c.outcome[tm].astype(np.int32) * 8 + c.category[tm]).astype(np.int32))
        # crew_arrived
        ev_ts.append(c.arr_ts)
        ev_kind.append(np.full(len(c.arr_ts), ARRIVED, np.int8))
        ev_call.append(offset + c.arr_call)
        ev_extra.append((c.arr_tc.astype(np.int32) | (c.arr_res.astype(np.int32) << 1)))
        offset += n
    ev_ts = np.concatenate(ev_ts)
    ev_kind = np.concatenate(ev_kind)
    ev_call = np.concatenate(ev_call)
    ev_extra = np.concatenate(ev_extra)
    call_trust = np.concatenate(call_trust)
    call_num = np.concatenate(call_num)

    if sc.gap_at is not None:
        t_index = codes.index(target)
        g0 = start_ms + int(sc.gap_at * span_ms)
        g1 = min(start_ms + span_ms, g0 + int(sc.gap_hours * HOUR_MS))
        silent = (call_trust[ev_call] == t_index) & (ev_ts >= g0) & (ev_ts < g1)
        counts["silenced_events"] = int(silent.sum())
        counts["gap"] = [g0, g1]
        keep = ~silent
        ev_ts, ev_kind, ev_call, ev_extra = ev_ts[keep], ev_kind[keep], ev_call[keep], ev_extra[keep]

    slots, variants = _plan_delivery(ev_ts, ev_kind, disorder, seed)
    counts["events"] = int(len(ev_ts))
    for name, k in (("call_received", RECEIVED), ("triaged", TRIAGED), ("crew_arrived", ARRIVED)):
        counts[name] = int((ev_kind == k).sum())
    counts["duplicates"] = int((variants == 1).sum())
    counts["malformed"] = int((variants >= 2).sum())
    counts["records"] = int(len(slots))

    prefixes = [f"{id_prefix}{code}-{day_tag}-" for code in codes]
    aid = [NEIGHBOUR.get(code, "MUTUAL") for code in codes]
    return SimulatedLog(codes, prefixes, aid, ev_ts, ev_kind, ev_call, ev_extra, call_trust,
                        call_num, slots, variants, counts)


def generate(trusts: list[TrustProfile], start_ms: int, days: float, seed: int = 0,
             disorder: Disorder = Disorder(), id_prefix: str = "",
             scenario: str | Scenario = "normal") -> Iterator[bytes]:
    """JSON Lines (bytes, no newline) in delivery order for all trusts over the period."""
    return simulate(trusts, start_ms, days, seed, disorder, id_prefix, scenario).lines()


def _simulate_trust(tp: TrustProfile, start_ms: int, minutes: int, span_ms: int,
                    strength: np.ndarray, sc: Scenario, is_target: bool,
                    rng: np.random.Generator) -> _Calls:
    per_min = tp.calls_per_day / 1440.0
    diurnal = diurnal_minutes(start_ms, minutes, tp.timezone)
    # the last minute may be partial
    last = span_ms - (minutes - 1) * MINUTE_MS
    width = np.ones(minutes)
    width[-1] = last / MINUTE_MS
    rate = per_min * diurnal * (1.0 + sc.surge_volume * strength) * width
    t_min = np.arange(minutes)

    strain = np.zeros(minutes)
    spike = np.zeros(minutes)
    if is_target and sc.incident_at is not None:
        m0 = int(sc.incident_at * minutes)
        after = np.maximum(t_min - m0, 0).astype(float)
        on = t_min >= m0
        spike = np.where(on, per_min * sc.incident_peak * np.exp(-after / sc.incident_decay_min),
                         0.0) * width
        s = np.where(on, (1 - np.exp(-after / 15.0)) * np.exp(-after / (sc.incident_strain_hours
                                                                          * 60.0)), 0.0)
        strain = sc.incident_strain * s / s.max() if s.max() > 0 else s

    def draw_times(r: np.ndarray) -> np.ndarray:
        total = float(r.sum())
        n = int(round(total))
        if n == 0:
            return np.zeros(0, np.int64)
        m = rng.choice(minutes, size=n, p=r / total)
        within = (rng.random(n) * np.minimum(width[m], 1.0) * MINUTE_MS).astype(np.int64)
        return start_ms + m.astype(np.int64) * MINUTE_MS + within

    base_recv = draw_times(rate)
    spike_recv = draw_times(spike)
    recv = np.concatenate([base_recv, spike_recv])
    is_spike = np.concatenate([np.zeros(len(base_recv), bool), np.ones(len(spike_recv), bool)])
    order = np.argsort(recv, kind="stable")
    recv, is_spike = recv[order], is_spike[order]
    n = len(recv)
    minute = np.minimum((recv - start_ms) // MINUTE_MS, minutes - 1)
    st = strength[minute]

    # -- outcomes, apportioned exactly ------------------------------------------------------
    outcome = np.full(n, DISPATCH, np.int8)
    category = np.full(n, NO_CATEGORY, np.int8)
    base = ~is_spike
    w_recv = np.where(base, tp.redirect_at_receipt + sc.surge_redirect * st / 2, 0.0)
    rr = choose_exact(rng, w_recv, round(w_recv.sum()))
    outcome[rr] = REDIRECT_RECEIPT
    w_tri = np.where(base & ~rr, tp.redirect_by_triage + sc.surge_redirect * st / 2, 0.0)
    rt_ = choose_exact(rng, w_tri, round(w_tri.sum()))
    outcome[rt_] = REDIRECT_TRIAGE
    incident = base & ~rr & ~rt_
    w_ht = np.where(incident, tp.hear_and_treat + sc.surge_hear_and_treat * st, 0.0)
    ht = choose_exact(rng, w_ht, round(w_ht.sum()))
    outcome[ht] = HEAR_AND_TREAT

    dispatched = np.flatnonzero(incident & ~ht)
    category[dispatched] = rng.permutation(
        np.repeat(np.arange(4, dtype=np.int8), apportion(len(dispatched), tp.category_share)))
    spiked = np.flatnonzero(is_spike)
    category[spiked] = rng.choice(4, size=len(spiked), p=np.asarray(sc.incident_mix)
                                  / sum(sc.incident_mix)).astype(np.int8)
    redirected_tri = np.flatnonzero(rt_)
    category[redirected_tri] = rng.choice(4, size=len(redirected_tri),
                                          p=np.asarray(tp.category_share) / sum(tp.category_share))
    hts = np.flatnonzero(ht)
    category[hts] = np.where(rng.random(len(hts)) < 0.8, 2, 3).astype(np.int8)

    # -- triage ------------------------------------------------------------------------------
    sig = 0.6
    noc = rng.lognormal(math.log(tp.nature_of_call_s) - sig * sig / 2, sig, size=n)
    delay_s = np.maximum(noc, 3.0)
    delay_s = np.where(outcome == HEAR_AND_TREAT,
                       delay_s + rng.lognormal(math.log(25 * 60), 0.7, size=n), delay_s)
    delay_s = np.where(outcome == REDIRECT_TRIAGE,
                       delay_s + rng.lognormal(math.log(120), 0.6, size=n), delay_s)
    triage = recv + (delay_s * 1000).astype(np.int64)

    # -- response times ------------------------------------------------------------------------
    disp = np.flatnonzero(outcome == DISPATCH)
    cat_d = category[disp]
    clock_start = np.minimum(triage[disp], recv[disp] + ARP_CAP_MS[cat_d])
    load = (rate + spike)[minute[disp]]
    load_z = (load - load.mean()) / (load.std() or 1.0)
    rho = 0.35
    score = rho * load_z + math.sqrt(1 - rho * rho) * rng.standard_normal(len(disp))
    factor = 1.0 + np.asarray(sc.surge_response)[cat_d] * st[disp] + strain[minute[disp]]
    rt_s = np.zeros(len(disp))
    c1t_s = np.full(len(disp), np.nan)
    for ci, name in enumerate(CATEGORIES):
        sel = np.flatnonzero(cat_d == ci)
        if len(sel) == 0:
            continue
        values = ResponseDistribution(*tp.mean_p90_s[name]).sample_sorted(len(sel), rng)
        ranks = np.argsort(score[sel], kind="stable")
        rt_s[sel[ranks]] = values
        if ci == 0:
            k = int(round(len(sel) * tp.c1_transport))
            with_t = sel[choose_exact(rng, np.ones(len(sel)), k)]
            if k:
                tvals = ResponseDistribution(*tp.mean_p90_s["C1T"]).sample_sorted(k, rng)
                by_c1 = with_t[np.argsort(rt_s[with_t], kind="stable")]
                floor = rt_s[by_c1]
                # never before the C1 arrival; re-pin so the lift does not move mean and 90th
                for _ in range(3):
                    tvals = pin_mean_p90(np.maximum(tvals, floor), *tp.mean_p90_s["C1T"])
                c1t_s[by_c1] = np.maximum(tvals, floor)
    first = clock_start + np.clip(np.round(rt_s * factor * 1000), 1, MAX_RESPONSE_S * 1000).astype(np.int64)
    c1t_at = np.where(np.isnan(c1t_s), -1,
                      clock_start + np.clip(np.round(np.nan_to_num(c1t_s) * factor * 1000), 1,
                                            MAX_RESPONSE_S * 1000).astype(np.int64))

    # -- resources and arrivals ------------------------------------------------------------------
    arr_call, arr_ts, arr_tc = [], [], []
    is_c1 = cat_d == 0
    has_t = c1t_at >= 0
    # C1 with transport: first arrival is the ambulance itself when C1T == C1
    same = is_c1 & has_t & (c1t_at == first)
    first_tc = np.where(is_c1, same, rng.random(len(disp)) < np.array([0, 0.85, 0.8, 0.75])[cat_d])
    arr_call.append(disp)
    arr_ts.append(first)
    arr_tc.append(first_tc)
    # C1: the ambulance arriving after a rapid-response car
    later_t = is_c1 & has_t & ~same
    arr_call.append(disp[later_t])
    arr_ts.append(c1t_at[later_t])
    arr_tc.append(np.ones(int(later_t.sum()), bool))
    # C2-C4 with a car first: usually an ambulance follows
    follow = ~is_c1 & ~first_tc & (rng.random(len(disp)) < 0.9)
    arr_call.append(disp[follow])
    arr_ts.append(first[follow] + (rng.exponential(8 * 60, size=int(follow.sum())) * 1000)
                  .astype(np.int64) + 1000)
    arr_tc.append(np.ones(int(follow.sum()), bool))
    # extra non-transport resources (officers, second cars) after the first arrival
    extra_n = rng.poisson(np.array([0.6, 0.25, 0.1, 0.05])[cat_d])
    rep = np.repeat(np.arange(len(disp)), extra_n)
    arr_call.append(disp[rep])
    arr_ts.append(first[rep] + (rng.exponential(6 * 60, size=len(rep)) * 1000).astype(np.int64)
                  + 1000)
    arr_tc.append(np.zeros(len(rep), bool))
    arr_call = np.concatenate(arr_call)
    arr_ts = np.concatenate(arr_ts)
    arr_tc = np.concatenate(arr_tc)
    fleet = max(20, int(tp.calls_per_day / 8))
    arr_res = rng.integers(1, min(fleet, 9999) + 1, size=len(arr_call))
    return _Calls(recv, outcome, category, triage, arr_call, arr_ts, arr_tc, arr_res)


def _plan_delivery(ev_ts: np.ndarray, ev_kind: np.ndarray, disorder: Disorder,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(event index, variant) per record in delivery order; variant 0 the event, 1 a
    duplicate, 2+k a malformed copy of kind k. Ties keep event-time order."""
    n = len(ev_ts)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, 0xD15])
    delivery = ev_ts.copy()
    late = disorder.lateness_ms
    if n and (disorder.within_lateness or disorder.beyond_lateness):
        u = rng.random(n)
        within = u < disorder.within_lateness
        beyond = (u >= disorder.within_lateness) & \
            (u < disorder.within_lateness + disorder.beyond_lateness)
        delivery[within] += (rng.random(int(within.sum())) * 0.9 * late).astype(np.int64)
        delivery[beyond] += (late * (1.5 + 3.5 * rng.random(int(beyond.sum())))).astype(np.int64)
    slot_ev = [np.arange(n, dtype=np.int64)]
    slot_var = [np.zeros(n, np.int8)]
    slot_time = [delivery]
    if n and disorder.duplicates:
        d = np.flatnonzero(rng.random(n) < disorder.duplicates)
        slot_ev.append(d)
        slot_var.append(np.ones(len(d), np.int8))
        slot_time.append(delivery[d] + (rng.random(len(d)) * 60_000).astype(np.int64))
    if n and disorder.malformed:
        k = int(rng.binomial(n, disorder.malformed))
        src = rng.integers(0, n, size=k)
        kinds = rng.integers(0, len(MALFORMED_KINDS), size=k)
        slot_ev.append(src)
        slot_var.append((2 + kinds).astype(np.int8))
        slot_time.append(delivery[src] + (rng.random(k) * 10_000).astype(np.int64))
    ev = np.concatenate(slot_ev)
    var = np.concatenate(slot_var)
    tm = np.concatenate(slot_time)
    order = np.lexsort((ev, ev_kind[ev], ev_ts[ev], tm))
    return ev[order], var[order]


def write_jsonl(lines, path: str, compresslevel: int = 4) -> int:
    """Write lines (gzip when the name ends in .gz); returns the count."""
    import gzip
    n = 0
    f = gzip.open(path, "wb", compresslevel=compresslevel) if str(path).endswith(".gz") \
        else open(path, "wb")
    with f:
        buf = []
        for line in lines:
            buf.append(line)
            if len(buf) >= 65536:
                f.write(b"\n".join(buf) + b"\n")
                n += len(buf)
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
            n += len(buf)
    return n


def with_volume(profiles: list[TrustProfile], calls_per_day: float) -> list[TrustProfile]:
    return [replace(p, calls_per_day=calls_per_day) for p in profiles]


# -- command line ------------------------------------------------------------------------------
def _profiles(args) -> tuple[list[TrustProfile], str | None]:
    """Trust profiles from --like/--month or --trusts, and the month they describe."""
    from producers import ambsys
    if args.like is not None:
        month = ambsys.parse_month(args.month) if args.month else ambsys.latest_month(args.like)
        return like(args.like, month), month
    if args.month is not None:
        raise CallstreamError("--month calibrates from AmbSYS: use it with --like TRUST")
    names = [c.strip() for c in (args.trusts or "LAS").split(",") if c.strip()]
    if not names:
        raise CallstreamError("--trusts names no trust")
    if len(names) == 1 and names[0].lower() == "england":
        return england(), None
    known = dict(ENGLAND)
    out = []
    for name in names:
        code = name.upper() if name.upper() in known else name
        if code not in known and args.calls_per_day is None:
            raise CallstreamError(f"unknown trust {name!r}; known: {', '.join(known)} or "
                                  "england (give --calls-per-day to simulate any other name)")
        if not 0 < len(code) <= 16:
            raise CallstreamError(f"trust code {name!r} must be 1-16 characters")
        out.append(default_profile(code))
    return out, None


def _period(args, month: str | None, tz: str) -> tuple[int, float]:
    """(start ms, days) from --start/--hours/--days, defaulting to the calibrated month."""
    import calendar
    import time as _time
    from streams.timefmt import parse_ts
    if args.start is None:
        if month is not None:
            y, m = (int(x) for x in month.split("-"))
            start = int(datetime(y, m, 1, tzinfo=ZoneInfo(tz)).timestamp() * 1000)
        else:
            start = parse_ts("2026-01-14T00:00:00Z")
    elif args.start.strip().lower() == "now":
        start = int(_time.time()) * 1000
    else:
        start = parse_ts(args.start)
        if start is None:
            raise CallstreamError(f"--start {args.start!r} is not an RFC 3339 time with an "
                                  "offset (e.g. 2026-01-14T00:00:00Z) or 'now'")
    if args.hours is not None:
        days = args.hours / 24.0
    elif args.days is not None:
        days = args.days
    elif month is not None:
        y, m = (int(x) for x in month.split("-"))
        days = float(calendar.monthrange(y, m)[1])
    else:
        days = 1.0
    if not days > 0:
        raise CallstreamError("the period (--hours / --days) must be positive")
    if days > 400:
        raise CallstreamError("the period is limited to 400 days; write longer logs in parts")
    return start, days


def cli(args) -> int:
    """`callstream simulate`."""
    import sys
    import time as _time
    from pathlib import Path

    from streams.settings import parse_duration_ms

    started = _time.perf_counter()
    trusts, month = _profiles(args)
    if args.calls_per_day is not None:
        if not args.calls_per_day > 0:
            raise CallstreamError("--calls-per-day must be positive")
        trusts = with_volume(trusts, args.calls_per_day)
    start, days = _period(args, month, trusts[0].timezone)
    disorder = Disorder(within_lateness=args.disorder, beyond_lateness=args.late,
                        duplicates=args.duplicates, malformed=args.malformed,
                        lateness_ms=parse_duration_ms(args.lateness, "--lateness"))
    if not args.kafka and (args.speed is not None or args.max or args.from_line != 1):
        raise CallstreamError("--speed, --max and --from-line are for publishing: use them "
                              "with --kafka")
    if args.out is not None:
        out = Path(args.out)
        if not out.parent.exists():
            raise CallstreamError(f"directory {str(out.parent)!r} does not exist")
    log = simulate(trusts, start, days, seed=args.seed, disorder=disorder,
                   id_prefix=args.id_prefix, scenario=args.scenario)
    what = ", ".join(t.code for t in trusts) if len(trusts) <= 4 else f"{len(trusts)} trusts"
    basis = f"like {args.like} {month}" if month else "default profiles"
    c = log.counts
    if args.kafka:
        from producers.publish import publish_lines, report
        progress = {"auto": sys.stderr.isatty(), "always": True, "never": False}[args.progress]
        result = publish_lines(log.lines(), len(log), args.bootstrap, args.topic_prefix,
                               args.partitions, args.speed, progress, from_line=args.from_line)
        return report(result, args.bootstrap)
    n = write_jsonl(log.lines(), str(out))
    print(f"wrote {n:,} records ({c['calls']:,} calls, {c['events']:,} events, "
          f"{c['duplicates']:,} duplicates, {c['malformed']:,} malformed) for {what} "
          f"({basis}, scenario {args.scenario}, "
          f"{f'{days * 24:g} hours' if days < 2 else f'{days:g} days'}) to {out} in "
          f"{_time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0
