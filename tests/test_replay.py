"""Offline replay: determinism under reordering, exactness against a direct computation, CLI."""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections import defaultdict

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from producers.simulate import Disorder, TrustProfile, generate
from streams.replay import process_lines
from streams.settings import ProcessingSettings
from streams.timefmt import parse_ts

START = parse_ts("2026-01-14T00:00:00.000Z")
SETTINGS = ProcessingSettings()


def small_log(seed: int, hours: float = 8, **disorder) -> list[bytes]:
    trusts = [TrustProfile("LAS", 900), TrustProfile("EEAST", 500, hear_and_treat=0.25,
                                                     redirect_at_receipt=0.03)]
    return list(generate(trusts, START, hours / 24, seed=seed, disorder=Disorder(**disorder)))


def stats_bytes(out) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in out.stats_records)


def shuffle_within_lateness(lines: list[bytes], seed: int, lateness_ms: int) -> list[bytes]:
    """Deliver each event up to lateness/2 after its event time: every event stays on time."""
    rng = np.random.default_rng(seed)
    ts = np.array([orjson.loads(line)["ts"] and parse_ts(orjson.loads(line)["ts"]) for line in lines])
    delivery = ts + rng.integers(0, lateness_ms // 2, size=len(lines))
    order = np.argsort(delivery, kind="stable")
    return [lines[i] for i in order]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), shuffle_seed=st.integers(0, 10_000))
def test_any_order_within_lateness_gives_byte_identical_stats(seed, shuffle_seed):
    lines = small_log(seed, hours=6, duplicates=0.02)
    a_summary, a_out = process_lines(lines, SETTINGS)
    shuffled = shuffle_within_lateness(lines, shuffle_seed, SETTINGS.allowed_lateness_ms)
    assert shuffled != lines
    b_summary, b_out = process_lines(shuffled, SETTINGS)
    assert a_summary["late_events"] == 0 and b_summary["late_events"] == 0
    assert stats_bytes(a_out) == stats_bytes(b_out)
    assert a_summary == b_summary


def test_late_events_beyond_lateness_are_counted_not_lost():
    lines = small_log(3, hours=6, beyond_lateness=0.02)
    summary, _ = process_lines(lines, SETTINGS)
    clean, _ = process_lines(small_log(3, hours=6), SETTINGS)
    assert summary["late_events"] > 0
    # every response is still counted exactly once
    for cat in ("C1", "C2", "C3", "C4"):
        assert summary["categories"][cat]["count"] == clean["categories"][cat]["count"]


def reference(lines: list[bytes], clock: str = "arp") -> dict:
    """A direct computation: group events per call, apply CONTRACT §2, exact numpy stats."""
    calls = defaultdict(lambda: {"recv": None, "trust": None, "answered": None, "triages": [],
                                 "arrivals": []})
    for line in lines:
        e = orjson.loads(line)
        c = calls[e["call_id"]]
        ts = parse_ts(e["ts"])
        if e["type"] == "call_received":
            c["recv"], c["trust"], c["answered"] = ts, e["trust"], e.get("answered_by", e["trust"])
        elif e["type"] == "triaged":
            c["triages"].append((ts, e.get("disposition", "dispatch"), e.get("category")))
        else:
            c["arrivals"].append((ts, e.get("transport_capable", True)))
    cap = {"C1": 30_000, "C2": 240_000, "C3": 240_000, "C4": 240_000}
    times = defaultdict(list)
    ht = redirected = 0
    for c in calls.values():
        if c["answered"] != c["trust"]:
            redirected += 1
            continue
        _, disp, cat = max(c["triages"])
        if disp == "hear_and_treat":
            ht += 1
            continue
        if disp == "redirect":
            redirected += 1
            continue
        first_triage = min(t for t, _, _ in c["triages"])
        start = c["recv"] if clock == "connect" else min(first_triage, c["recv"] + cap[cat])
        times[cat].append(min(t for t, _ in c["arrivals"]) - start)
        if cat == "C1":
            tc = [t for t, capable in c["arrivals"] if capable]
            if tc:
                times["C1T"].append(min(tc) - start)
    return {"calls": len(calls), "hear_and_treat": ht, "redirected": redirected,
            "times": {k: np.array(v) for k, v in times.items()}}


@pytest.mark.parametrize("clock", ["arp", "connect"])
def test_summary_equals_a_direct_exact_computation(clock):
    lines = small_log(11, hours=30)
    summary, _ = process_lines(lines, SETTINGS.with_clock(clock))
    ref = reference(lines, clock)
    assert summary["calls"] == ref["calls"]
    assert summary["hear_and_treat"] == ref["hear_and_treat"]
    assert summary["redirected"] == ref["redirected"]
    for cat in ("C1", "C1T", "C2", "C3", "C4"):
        exact = ref["times"][cat]
        got = summary["categories"][cat]
        assert got["count"] == len(exact)
        assert got["mean_s"] == round(int(exact.sum()) / len(exact) / 1000, 3)
        assert got["max_s"] == exact.max() / 1000
        for q, key in ((0.5, "p50_s"), (0.9, "p90_s"), (0.99, "p99_s")):
            true = np.quantile(exact, q, method="lower") / 1000
            assert abs(got[key] - true) <= 0.01 * true + 0.001, (cat, key, got[key], true)


def test_window_counts_add_up_to_the_summary():
    lines = small_log(5, hours=30)
    summary, out = process_lines(lines, SETTINGS)
    for cat in ("C1", "C2", "C3", "C4"):
        quarter = sum(r["count"] for r in out.stats_records
                      if r["window"] == "15m" and r["trust"] == "*" and r["category"] == cat)
        assert quarter == summary["categories"][cat]["count"]
    calls = sum(r["calls"] for r in out.stats_records
                if r["window"] == "15m" and r["trust"] == "*" and r["category"] == "ALL")
    assert calls == summary["calls"]


# -- command line -----------------------------------------------------------------------------
def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_replays_plain_and_gzip_logs_into_the_contract_files(tmp_path):
    lines = small_log(2, hours=4, malformed=0.01)
    half = len(lines) // 2
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines[:half]) + b"\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines[half:]) + b"\n\n")
    out = tmp_path / "out"
    r = cli("replay", "--offline", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz"),
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = orjson.loads((out / "summary.json").read_bytes())
    direct, mem = process_lines(lines, SETTINGS)
    assert summary["events"] == len(lines) == direct["events"]
    assert summary["dead_letters"] == direct["dead_letters"] > 0
    assert summary["categories"] == direct["categories"]
    assert (out / "stats.jsonl").read_bytes() == stats_bytes(mem) + b"\n"
    dead = [orjson.loads(x) for x in (out / "dead_letters.jsonl").read_bytes().splitlines()]
    assert len(dead) == summary["dead_letters"]
    assert {d["source"] for d in dead} <= {"a.jsonl", "b.jsonl.gz"}
    assert all(d["raw"] and d["reason"] and d["line"] >= 1 for d in dead)
    assert (out / "alerts.jsonl").exists()


def test_cli_missing_file_is_one_line_and_nonzero(tmp_path):
    r = cli("replay", "--offline", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_unreadable_config_is_one_line(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_bytes(b"")
    bad = tmp_path / "bad.toml"
    bad.write_text("[processing\nclock=")
    r = cli("replay", "--offline", str(log), "--out", str(tmp_path / "o"), "--config", str(bad))
    assert r.returncode != 0 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr
    r = cli("replay", "--offline", str(log), "--out", str(tmp_path / "o"), "--config",
            str(tmp_path / "missing.toml"))
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_cli_empty_log_gives_empty_outputs(tmp_path):
    log = tmp_path / "a.jsonl"
    log.write_bytes(b"\n\n")
    r = cli("replay", "--offline", str(log), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    summary = orjson.loads((tmp_path / "o" / "summary.json").read_bytes())
    assert summary["events"] == 0 and summary["calls"] == 0
    assert (tmp_path / "o" / "stats.jsonl").read_bytes() == b""


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    log = tmp_path / "a.jsonl.gz"
    data = gzip.compress(b"\n".join(small_log(1, hours=2)))
    log.write_bytes(data[: len(data) // 2])
    r = cli("replay", "--offline", str(log), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "could not be read" in r.stderr and "Traceback" not in r.stderr
