"""Synthetic ambulance telemetry: realistic, deterministic per seed, vectorised with NumPy.

Generates call_received / triaged / crew_arrived events for one or more trusts: a diurnal
call profile, category mix, hear-and-treat and redirect shares, lognormal response times
per category, several resources per call (C1T from the first transport-capable one), and
optional delivery disorder (within or beyond the lateness bound), duplicates and malformed
records. Output is JSON Lines bytes in delivery order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

MINUTE_MS = 60_000
DAY_MS = 86_400_000

#: Hourly call-volume shape (relative), peak ~1.5x and trough ~0.45x the hourly mean.
DIURNAL = np.array([0.62, 0.53, 0.47, 0.45, 0.46, 0.52, 0.70, 0.92, 1.10, 1.22, 1.30, 1.35,
                    1.38, 1.40, 1.42, 1.45, 1.50, 1.50, 1.42, 1.30, 1.18, 1.02, 0.86, 0.72])
DIURNAL = DIURNAL / DIURNAL.mean()

CATEGORIES = ("C1", "C2", "C3", "C4")


def lognormal_from_mean_p90(mean: float, p90: float) -> tuple[float, float]:
    """(mu, sigma) of a lognormal with the given mean and 90th centile."""
    z = 1.2815515655446004
    c = math.log(p90) - math.log(mean)      # = z*s - s^2/2
    disc = z * z - 2 * c
    if disc < 0:
        raise ValueError(f"no lognormal has mean {mean} and p90 {p90}")
    s = z - math.sqrt(disc)
    return math.log(mean) - s * s / 2, s


@dataclass(frozen=True)
class TrustProfile:
    """Demand and performance of one trust (times in seconds)."""

    code: str
    calls_per_day: float
    category_share: tuple = (0.127, 0.645, 0.219, 0.009)
    hear_and_treat: float = 0.18
    redirect_at_receipt: float = 0.01      # answered by another service (mutual aid)
    redirect_by_triage: float = 0.01
    mean_p90_s: dict = field(default_factory=lambda: {
        "C1": (474.0, 846.0), "C2": (1806.0, 3714.0), "C3": (7200.0, 14880.0),
        "C4": (9600.0, 19320.0)})
    c1_no_transport: float = 0.05          # C1 calls with no transport-capable arrival
    triage_median_s: float = 75.0


#: England's trusts with a share of national demand (about 27k calls a day in 2025/26).
ENGLAND = (("LAS", 0.165), ("NWAS", 0.145), ("YAS", 0.115), ("WMAS", 0.12), ("EEAST", 0.11),
           ("EMAS", 0.09), ("SWASFT", 0.09), ("SECAMB", 0.08), ("SCAS", 0.07), ("NEAS", 0.05),
           ("IOW", 0.004))


def england(calls_per_day: float = 27_300.0) -> list[TrustProfile]:
    total = sum(s for _, s in ENGLAND)
    return [TrustProfile(code, calls_per_day * s / total) for code, s in ENGLAND]


@dataclass(frozen=True)
class Disorder:
    """Delivery faults: shares of events delayed (within / beyond lateness), duplicated, bad."""

    within_lateness: float = 0.0
    lateness_ms: int = 120_000
    beyond_lateness: float = 0.0
    duplicates: float = 0.0
    malformed: float = 0.0


def _ts_strings(ms: np.ndarray) -> np.ndarray:
    return np.char.add(np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms"), "Z")


def generate(trusts: list[TrustProfile], start_ms: int, days: float, seed: int = 0,
             disorder: Disorder = Disorder(), id_prefix: str = "") -> Iterator[bytes]:
    """JSON Lines (bytes, no newline) in delivery order for all trusts over the period."""
    rng = np.random.default_rng(seed)
    cols = _simulate(trusts, start_ms, days, rng, id_prefix)
    yield from _render(cols, rng, disorder)


def _simulate(trusts, start_ms, days, rng, id_prefix):
    kinds, cids, tss, trust_col, extra = [], [], [], [], []
    span_ms = int(days * DAY_MS)
    for t_index, tp in enumerate(trusts):
        n = int(rng.poisson(tp.calls_per_day * days))
        if n == 0:
            continue
        # receive times: day uniform, hour by diurnal weight, uniform within the hour
        hour = rng.choice(24, size=n, p=DIURNAL / DIURNAL.sum())
        day = rng.integers(0, max(1, math.ceil(days)), size=n)
        recv = start_ms + day * DAY_MS + hour * 3_600_000 + rng.integers(0, 3_600_000, size=n)
        keep = recv < start_ms + span_ms
        recv = np.sort(recv[keep])
        n = len(recv)
        ids = np.char.add(f"{id_prefix}{tp.code}-", np.char.zfill(np.arange(n).astype(str), 8))
        u = rng.random(n)
        redirect_recv = u < tp.redirect_at_receipt
        u2 = rng.random(n)
        ht = ~redirect_recv & (u2 < tp.hear_and_treat)
        redirect_tri = ~redirect_recv & ~ht & (u2 < tp.hear_and_treat + tp.redirect_by_triage)
        dispatch = ~redirect_recv & ~ht & ~redirect_tri
        cat = rng.choice(4, size=n, p=np.array(tp.category_share) / sum(tp.category_share))
        triage_delay = (rng.lognormal(math.log(tp.triage_median_s), 0.5, size=n) * 1000).astype(np.int64)
        triage_delay = np.where(cat == 0, triage_delay // 3, triage_delay)
        triage = recv + triage_delay
        cap = np.where(cat == 0, 30_000, 240_000)
        start = np.minimum(triage, recv + cap)
        rt = np.empty(n)
        for ci, name in enumerate(CATEGORIES):
            m = cat == ci
            mu, s = lognormal_from_mean_p90(*tp.mean_p90_s[name])
            rt[m] = rng.lognormal(mu, s, size=int(m.sum()))
        first_arrival = start + (rt * 1000).astype(np.int64) + 1
        n_res = 1 + rng.binomial(2, 0.35, size=n)
        first_tc = rng.random(n) < np.where(cat == 0, 0.6, 0.9)
        c1_none = (cat == 0) & (rng.random(n) < tp.c1_no_transport)
        # call_received
        kinds.append(np.zeros(n, np.int8)); cids.append(ids); tss.append(recv)
        trust_col.append(np.full(n, t_index)); extra.append(np.where(redirect_recv, 1, 0))
        # triaged (not for calls redirected at receipt)
        tm = ~redirect_recv
        disp_code = np.where(ht, 1, np.where(redirect_tri, 2, 0))  # 0 dispatch 1 h&t 2 redirect
        kinds.append(np.ones(int(tm.sum()), np.int8)); cids.append(ids[tm]); tss.append(triage[tm])
        trust_col.append(np.full(int(tm.sum()), t_index))
        extra.append((disp_code * 4 + cat)[tm])
        # arrivals: resource k arrives after the previous one
        for k in range(3):
            m = dispatch & (n_res > k)
            if k == 0:
                at = first_arrival[m]
                tc = (first_tc & ~c1_none)[m]
            else:
                at = first_arrival[m] + (rng.exponential(300.0, size=int(m.sum())) * 1000).astype(np.int64) * k
                tc = ~c1_none[m]
            kinds.append(np.full(int(m.sum()), 2, np.int8)); cids.append(ids[m]); tss.append(at)
            trust_col.append(np.full(int(m.sum()), t_index)); extra.append(np.where(tc, 1, 0) + 2 * k)
    codes = [tp.code for tp in trusts]
    return (np.concatenate(kinds), np.concatenate(cids), np.concatenate(tss),
            np.concatenate(trust_col), np.concatenate(extra), codes)


def _render(cols, rng, disorder: Disorder) -> Iterator[bytes]:
    kinds, cids, tss, trust_col, extra, codes = cols
    n = len(kinds)
    delivery = tss.astype(np.int64).copy()
    if disorder.within_lateness:
        m = rng.random(n) < disorder.within_lateness
        # delayed by less than the lateness minus a margin: still on time for the watermark
        delivery[m] += rng.integers(0, max(1, disorder.lateness_ms // 2), size=int(m.sum()))
    beyond = np.zeros(n, bool)
    if disorder.beyond_lateness:
        beyond = rng.random(n) < disorder.beyond_lateness
        delivery[beyond] += disorder.lateness_ms * 3 + rng.integers(0, 600_000, size=int(beyond.sum()))
    order = np.lexsort((kinds, delivery))
    dup = rng.random(n) < disorder.duplicates if disorder.duplicates else np.zeros(n, bool)
    bad = rng.random(n) < disorder.malformed if disorder.malformed else np.zeros(n, bool)
    ts_str = _ts_strings(tss)
    cat_names = CATEGORIES
    disp_names = ("dispatch", "hear_and_treat", "redirect")
    for i in order.tolist():
        kind = kinds[i]
        trust = codes[trust_col[i]]
        e = int(extra[i])
        if kind == 0:
            answered = ',"answered_by":"MUTUAL"' if e else ""
            line = (f'{{"type":"call_received","call_id":"{cids[i]}","ts":"{ts_str[i]}",'
                    f'"trust":"{trust}"{answered}}}')
        elif kind == 1:
            d, c = divmod(e, 4)
            redirect = ',"redirect_to":"111"' if d == 2 else ""
            cat = f',"category":"{cat_names[c]}"' if d != 1 else ""
            line = (f'{{"type":"triaged","call_id":"{cids[i]}","ts":"{ts_str[i]}",'
                    f'"trust":"{trust}"{cat},"disposition":"{disp_names[d]}"{redirect}}}')
        else:
            tc, k = e & 1, e >> 1
            line = (f'{{"type":"crew_arrived","call_id":"{cids[i]}","ts":"{ts_str[i]}",'
                    f'"trust":"{trust}","resource_id":"{trust}-R{k}",'
                    f'"transport_capable":{"true" if tc else "false"}}}')
        raw = line.encode()
        if bad[i]:
            yield raw[: len(raw) // 2]
            continue
        yield raw
        if dup[i]:
            yield raw


def write_jsonl(lines: Iterator[bytes], path: str) -> int:
    """Write lines (gzip when the name ends in .gz); returns the count."""
    import gzip
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "wb") as f:
        buf = []
        for line in lines:
            buf.append(line)
            n += 1
            if len(buf) >= 65536:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    return n


def cli(args) -> int:
    """`callstream simulate`: the basic generator (calibration and scenarios come later)."""
    import sys
    from pathlib import Path

    from streams.errors import CallstreamError
    from streams.timefmt import parse_ts

    start = parse_ts(args.start)
    if start is None:
        raise CallstreamError(f"--start {args.start!r} is not an RFC 3339 time with an offset")
    if args.hours <= 0:
        raise CallstreamError("--hours must be positive")
    if args.trusts.strip().lower() == "england":
        trusts = england()
    else:
        known = dict(ENGLAND)
        total = sum(known.values())
        trusts = []
        for code in [c.strip() for c in args.trusts.split(",") if c.strip()]:
            share = known.get(code, 0.05)
            trusts.append(TrustProfile(code, 27_300.0 * share / total))
    if args.calls_per_day is not None:
        trusts = [TrustProfile(t.code, args.calls_per_day) for t in trusts]
    out = Path(args.out)
    if not out.parent.exists():
        raise CallstreamError(f"directory {str(out.parent)!r} does not exist")
    disorder = Disorder(within_lateness=args.disorder, duplicates=args.duplicates,
                        malformed=args.malformed)
    n = write_jsonl(generate(trusts, start, args.hours / 24.0, seed=args.seed,
                             disorder=disorder), str(out))
    print(f"wrote {n:,} events for {', '.join(t.code for t in trusts)} to {out}", file=sys.stderr)
    return 0
