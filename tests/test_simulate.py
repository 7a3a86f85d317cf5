"""Simulator: calibration against the published AmbSYS rows (exact computation on the log),
scenario shapes, determinism, delivery faults, and the command line."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import Counter

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import in_ci
from producers import ambsys
from producers.simulate import (MAX_RESPONSE_S, SCENARIOS, Disorder, ResponseDistribution,
                                TrustProfile, generate, like, simulate)
from streams.replay import process_lines
from streams.settings import ProcessingSettings
from streams.timefmt import parse_ts

AMBSYS = ambsys.data_dir()
CAP_MS = {"C1": 30_000, "C2": 240_000, "C3": 240_000, "C4": 240_000}
START = parse_ts("2026-01-14T00:00:00.000Z")

# the shared data is part of the project: CI must have it (a laptop without it may skip)
pytestmark = pytest.mark.skipif(not AMBSYS.exists() and not in_ci(),
                                reason=f"no AmbSYS data at {AMBSYS}")


# -- an independent reading of the log ---------------------------------------------------------
def calls_table(lines) -> pd.DataFrame:
    """One row per call from the raw log: receipt, first triage (and its outcome), first
    arrival, first transport-capable arrival. Built from the JSON alone."""
    recv, tri, arr, tc = {}, {}, {}, {}
    for line in lines:
        e = orjson.loads(line)
        cid, ts = e["call_id"], parse_ts(e["ts"])
        if e["type"] == "call_received":
            recv[cid] = (ts, e["trust"], e.get("answered_by", e["trust"]))
        elif e["type"] == "triaged":
            if cid not in tri or ts < tri[cid][0]:
                tri[cid] = (ts, e.get("category"), e.get("disposition", "dispatch"))
        else:
            arr[cid] = min(arr.get(cid, ts), ts)
            if e.get("transport_capable", True):
                tc[cid] = min(tc.get(cid, ts), ts)
    df = pd.DataFrame.from_dict(recv, orient="index", columns=["recv", "trust", "answered_by"])
    t = pd.DataFrame.from_dict(tri, orient="index", columns=["tri", "category", "disposition"])
    df = df.join(t).join(pd.Series(arr, name="arr", dtype="float")).join(
        pd.Series(tc, name="tc", dtype="float"))
    return df


def arp_times(df: pd.DataFrame) -> pd.DataFrame:
    """Face-to-face incidents with their response times (s) under the ARP clock (CONTRACT §2)."""
    d = df[(df.answered_by == df.trust) & (df.disposition == "dispatch")].copy()
    start = np.minimum(d.tri, d.recv + d.category.map(CAP_MS))
    d["rt"] = (d.arr - start) / 1000
    d["c1t"] = (d.tc - start) / 1000
    return d


def published(trust: str, month: str) -> pd.Series:
    """The AmbSYS row, read straight from the shared CSVs (not through producers.ambsys)."""
    org = "Eng" if trust == "england" else ambsys.TRUSTS[trust][0]
    year, mon = (int(x) for x in month.split("-"))
    rows = [df[(df["Org Code"] == org) & (df.Year == year) & (df.Month == mon)]
            for df in (pd.read_csv(f, na_values=".", low_memory=False)
                       for f in sorted(AMBSYS.glob("AmbSYS_*.csv")))]
    rows = [r for r in rows if len(r)]
    assert rows, (trust, month)
    return rows[-1].iloc[0]


def assert_calibrated(d: pd.DataFrame, row: pd.Series, incidents: int, ht: int) -> None:
    within = lambda got, want: abs(got / want - 1) <= 0.03  # noqa: E731
    assert within(ht / incidents, row.A17 / row.A7), ("hear and treat", ht / incidents)
    counts = {c: row[col] for c, col in ambsys.COUNT_COLUMNS.items()}
    total = sum(counts.values())
    for cat, (mean_col, p90_col) in ambsys.RESPONSE_COLUMNS.items():
        if cat == "C1T":
            v = d.loc[d.category == "C1", "c1t"].dropna()
            share, want_share = len(v) / (d.category == "C1").sum(), row.A9 / row.A8
        else:
            v = d.loc[d.category == cat, "rt"]
            share, want_share = len(v) / len(d), counts[cat] / total
        assert v.notna().all() and (v >= 0).all()
        assert within(share, want_share), (cat, "share", share, want_share)
        assert within(v.mean(), row[mean_col]), (cat, "mean", v.mean(), row[mean_col])
        p90 = np.percentile(v, 90)
        assert within(p90, row[p90_col]), (cat, "p90", p90, row[p90_col])


@pytest.mark.parametrize("trust,month", [("LAS", "2026-01"), ("EEAST", "2019-12")])
def test_a_calibrated_month_reproduces_the_published_figures(trust, month):
    row = published(trust, month)
    start = parse_ts(f"{month}-01T00:00:00Z")
    days = pd.Period(month).days_in_month
    lines = list(generate(like(trust, month), start, days, seed=7))
    df = calls_table(lines)
    incidents = df[(df.answered_by == df.trust) & (df.disposition != "redirect")]
    # daily volume: the month's incidents (A7), to within rounding
    assert abs(len(incidents) - row.A7) <= 3
    d = arp_times(df)
    assert d.arr.notna().all()                       # every dispatched call is reached
    assert_calibrated(d, row, len(incidents), int((incidents.disposition == "hear_and_treat").sum()))


@pytest.mark.slow
def test_a_month_of_england_reproduces_each_trust_and_the_national_row():
    month = "2026-01"
    row = published("england", month)
    lines = list(generate(like("england", month), parse_ts("2026-01-01T00:00:00Z"), 31, seed=3))
    assert 2_300_000 <= len(lines) <= 3_000_000
    d = arp_times(calls_table(lines))
    # national means are exact pooled means; national 90th centiles are the incident-weighted
    # mean of the trusts' 90th centiles (the published aggregation rule)
    for cat, (mean_col, p90_col) in ambsys.RESPONSE_COLUMNS.items():
        col = "c1t" if cat == "C1T" else "rt"
        sel = d[d.category == ("C1" if cat == "C1T" else cat)].dropna(subset=[col])
        assert abs(sel[col].mean() / row[mean_col] - 1) <= 0.03, (cat, sel[col].mean())
        per_trust = sel.groupby("trust")[col].agg(["size", lambda v: np.percentile(v, 90)])
        weighted = (per_trust["size"] * per_trust.iloc[:, 1]).sum() / per_trust["size"].sum()
        assert abs(weighted / row[p90_col] - 1) <= 0.03, (cat, weighted, row[p90_col])
    # London is its own row
    las = published("LAS", month)
    dl = d[d.trust == "LAS"]
    assert abs(dl[dl.category == "C2"].rt.mean() / las.A31 - 1) <= 0.03


# -- response-time laws ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(mean=st.floats(120, 20_000), ratio=st.floats(1.3, 4.2), n=st.integers(300, 5000),
       seed=st.integers(0, 2**32 - 1))
def test_response_samples_hit_mean_and_90th_centile(mean, ratio, n, seed):
    p90 = mean * ratio
    if p90 > 0.45 * MAX_RESPONSE_S:       # the cap leaves no room for the tail beyond this
        return
    v = ResponseDistribution(mean, p90).sample_sorted(n, np.random.default_rng(seed))
    assert len(v) == n and (v > 0).all() and (v <= MAX_RESPONSE_S).all()
    assert (np.diff(v) >= 0).all()
    assert abs(v.mean() / mean - 1) < 0.01
    assert abs(np.percentile(v, 90) / p90 - 1) < 0.01


# -- shape -------------------------------------------------------------------------------------
def test_diurnal_profile_peak_and_trough():
    lines = generate([TrustProfile("LAS", 20_000)], START, 7, seed=1)
    hours = Counter()
    for line in lines:
        e = orjson.loads(line)
        if e["type"] == "call_received":
            hours[int(e["ts"][11:13])] += 1      # January: London time is UTC
    per_hour = np.array([hours[h] for h in range(24)], float)
    rel = per_hour / per_hour.mean()
    assert 1.4 <= rel.max() <= 1.6, rel.round(2)
    assert 0.38 <= rel.min() <= 0.52, rel.round(2)
    assert 15 <= rel.argmax() <= 18 and 2 <= rel.argmin() <= 5


def test_resources_triage_and_c1t():
    lines = list(generate([TrustProfile("LAS", 6000)], START, 2, seed=4))
    df = calls_table(lines)
    d = arp_times(df)
    arrivals = Counter(orjson.loads(x)["call_id"] for x in lines if b'"crew_arrived"' in x)
    multi = sum(1 for cid in d.index if arrivals[cid] >= 2) / len(d)
    assert multi > 0.2                                   # several resources per call
    c1 = d[d.category == "C1"].dropna(subset=["tc"])
    assert (c1.tc >= c1.arr).all() and (c1.tc > c1.arr).any()   # C1T never before C1
    delay = ((df.tri - df.recv) / 1000).dropna()           # calls redirected at receipt: none
    assert (delay > 0).all() and 20 < delay[df.disposition == "dispatch"].median() < 60
    assert delay[df.disposition == "hear_and_treat"].median() > 10 * 60


# -- scenarios ---------------------------------------------------------------------------------
def hourly_redirect_share(df: pd.DataFrame) -> pd.Series:
    """Share of each hour's calls redirected by either route (CONTRACT §1)."""
    redirected = (df.answered_by != df.trust) | (df.disposition == "redirect")
    return redirected.groupby((df.recv - START) // 3_600_000).mean()


def test_winter_surge_redirects_cross_ten_percent_and_c2_deteriorates():
    trusts = like("LAS", "2026-01")
    lines = list(generate(trusts, START, 1, seed=11, scenario="winter-surge"))
    df = calls_table(lines)
    share = hourly_redirect_share(df)
    assert share.iloc[:3].max() < 0.04 and share.iloc[-4:].min() > 0.10, share.round(3).tolist()
    redirected_by_triage = df[df.disposition == "redirect"]
    assert (df.answered_by != df.trust).sum() > 0                       # both routes
    assert (redirected_by_triage.category == "C1").sum() > 0            # including C1
    d = arp_times(df).assign(hour=lambda x: (x.recv - START) // 3_600_000)
    c2 = d[d.category == "C2"].groupby("hour").rt.mean()
    assert c2.iloc[-6:].mean() > 1.8 * c2.iloc[:4].mean()
    # what the processor sees: the 1-hour redirect share per window crosses 10 %
    _, out = process_lines(lines, ProcessingSettings())
    alls = [r for r in out.stats_records
            if r["window"] == "1h" and r["trust"] == "LAS" and r["category"] == "ALL"
            and r["calls"] > 0]
    shares = [r["redirected"] / r["calls"] for r in alls]
    assert min(shares[:4]) < 0.04 and max(shares) > 0.10
    assert sum(r["redirected_c1"] for r in alls) > 0


def test_major_incident_is_a_sharp_spike_on_the_first_trust():
    trusts = [TrustProfile("LAS", 4000), TrustProfile("EEAST", 3000)]
    df = calls_table(generate(trusts, START, 1, seed=5, scenario="major-incident"))
    q = df.assign(q=(df.recv - START) // 900_000)
    las = q[q.trust == "LAS"].groupby("q").size()
    onset = int(SCENARIOS["major-incident"].incident_at * 96)
    assert las.loc[onset:onset + 1].max() > 4 * las.drop(range(onset - 1, onset + 8)).median()
    eeast = q[q.trust == "EEAST"].groupby("q").size()
    assert eeast.loc[onset:onset + 1].max() < 2 * eeast.median()


def test_data_gap_silences_one_trust_only():
    trusts = [TrustProfile("LAS", 4000), TrustProfile("EEAST", 3000)]
    log = simulate(trusts, START, 1, seed=5, scenario="data-gap")
    g0, g1 = log.counts["gap"]
    assert g1 - g0 == 2 * 3_600_000 and log.counts["silenced_events"] > 0
    seen = Counter()
    for line in log.lines():
        e = orjson.loads(line)
        if g0 <= parse_ts(e["ts"]) < g1:
            seen[e["trust"]] += 1
    assert seen["LAS"] == 0 and seen["EEAST"] > 100


def test_unknown_scenario_is_a_clear_error():
    from streams.errors import CallstreamError
    with pytest.raises(CallstreamError, match="unknown scenario"):
        simulate([TrustProfile("LAS", 100)], START, 1, scenario="tsunami")


# -- determinism and faults --------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_log_trusts_independent():
    a = list(generate(like("LAS", "2026-01"), START, 0.5, seed=9))
    b = list(generate(like("LAS", "2026-01"), START, 0.5, seed=9))
    c = list(generate(like("LAS", "2026-01"), START, 0.5, seed=10))
    assert a == b and a != c
    both = generate(like("LAS", "2026-01") + [TrustProfile("EEAST", 3000)], START, 0.5, seed=9)
    assert [x for x in both if b'"trust":"LAS"' in x] == a


def test_faults_keep_the_clean_events_and_are_all_accounted_for():
    trusts = [TrustProfile("LAS", 5000)]
    clean = simulate(trusts, START, 0.5, seed=2)
    faulty = simulate(trusts, START, 0.5, seed=2, disorder=Disorder(
        within_lateness=0.05, beyond_lateness=0.01, duplicates=0.02, malformed=0.01))
    c = faulty.counts
    assert c["events"] == clean.counts["events"] and c["malformed"] > 0 and c["duplicates"] > 0
    clean_lines = list(clean.lines())
    lines = list(faulty.lines())
    assert len(lines) == c["events"] + c["duplicates"] + c["malformed"]
    assert set(clean_lines) <= set(lines)                      # every event is still there
    s_clean, _ = process_lines(clean_lines, ProcessingSettings())
    s, _ = process_lines(lines, ProcessingSettings())
    assert s["dead_letters"] == c["malformed"]                 # every corrupt record rejected
    assert set(s["dead_letter_reasons"]) >= {"malformed_json", "unknown_type", "bad_timestamp",
                                              "missing_field"}
    assert s["late_events"] > 0
    for cat in ("C1", "C1T", "C2", "C3", "C4"):
        assert s["categories"][cat]["count"] == s_clean["categories"][cat]["count"]
    assert s["calls"] == s_clean["calls"]


def test_bad_fault_rates_are_refused():
    from streams.errors import CallstreamError
    with pytest.raises(CallstreamError, match="share between 0 and 1"):
        Disorder(duplicates=1.5)


# -- command line ------------------------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "streams.cli", "simulate", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_gzip_and_plain_logs(tmp_path):
    r = cli("--like", "LAS", "--month", "2026-01", "--hours", "6", "--seed", "3",
            "--duplicates", "0.01", "--out", str(tmp_path / "a.jsonl.gz"))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stderr
    lines = gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).splitlines()
    r = cli("--like", "LAS", "--month", "2026-01", "--hours", "6", "--seed", "3",
            "--duplicates", "0.01", "--out", str(tmp_path / "a.jsonl"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.jsonl").read_bytes().splitlines() == lines
    first = orjson.loads(lines[0])
    assert first["ts"].startswith("2026-01-01T00:") and first["trust"] == "LAS"


@pytest.mark.parametrize("args,message", [
    (["--like", "XYZ"], "unknown trust 'XYZ'"),
    (["--like", "NWAS", "--month", "2026-01"], "no AmbSYS month 2026-01 for NWAS"),
    (["--like", "LAS", "--month", "2026-13"], "is not YYYY-MM"),
    (["--like", "LAS", "--month", "2031-01"], "no AmbSYS month 2031-01 for LAS"),
    (["--trusts", "LAS,XYZ"], "unknown trust 'XYZ'"),
    (["--month", "2026-01"], "use it with --like"),
    (["--start", "yesterday"], "is not an RFC 3339 time"),
    (["--hours", "-1"], "must be positive"),
    (["--malformed", "2"], "share between 0 and 1"),
])
def test_cli_mistakes_are_one_line_and_nonzero(tmp_path, args, message):
    r = cli(*args, "--out", str(tmp_path / "x.jsonl"))
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_missing_output_directory(tmp_path):
    r = cli("--out", str(tmp_path / "nope" / "x.jsonl"))
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_missing_ambsys_data_is_a_clear_error(tmp_path, monkeypatch):
    from streams.errors import CallstreamError
    monkeypatch.setenv("CALLSTREAM_AMBSYS_DIR", str(tmp_path))
    with pytest.raises(CallstreamError, match="no AmbSYS data"):
        like("LAS", "2026-01")
