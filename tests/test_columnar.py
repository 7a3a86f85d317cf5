"""The columnar offline engine (streams.fast) against the reference Processor: every output
byte for byte, on generated and hand-made logs, through memory and through files."""

from __future__ import annotations

import gzip
import inspect
import json
import math
import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st

import tests.test_core as core_tests
import tests.test_replay as replay_tests
from producers.simulate import Disorder, TrustProfile, generate
from streams.events import Event, decode
from streams.fast import scan as S
from streams.fast.windows import _put_milli, _round3
from streams.processor import CollectingOutputs
from streams.replay import process_lines, process_records, run_offline
from streams.settings import ProcessingSettings, processing_from_table
from streams.timefmt import format_ts, parse_ts

BASE = parse_ts("2026-01-14T08:00:00.000Z")
SETTINGS = ProcessingSettings()


# -- comparing the engines ----------------------------------------------------------------------
class RecordingRules:
    """A rules hook that records every call (arguments as the reference passes them) and
    emits an alert now and then, so alert ordering is compared too."""

    def __init__(self) -> None:
        self.calls: list = []

    def evaluate(self, end, records, pressure, last_call, emit) -> None:
        p = pressure()
        self.calls.append((end, orjson.dumps(records), [(k, type(k[1]).__name__, v)
                                                        for k, v in p.items()],
                           list(last_call.items())))
        if len(self.calls) % 7 == 0 or any(r["category"] == "C1" and r["count"] > 1
                                           for r in records):
            emit({"end": end, "n": len(self.calls), "waiting": sum(v[0] for v in p.values())})


def outputs_bytes(out: CollectingOutputs) -> tuple[bytes, bytes, bytes]:
    return (b"".join(orjson.dumps(r) + b"\n" for r in out.stats_records),
            b"".join(d.to_json() + b"\n" for d in out.dead_letters),
            b"".join(orjson.dumps(r) + b"\n" for r in out.alert_records))


def both(records: list[tuple[str, int, bytes]], settings=SETTINGS, rules=None):
    """Run both engines; assert every output is identical; return the columnar results."""
    ref_rules = rules() if rules else None
    col_rules = rules() if rules else None
    ref_summary, ref_out = process_records(records, settings, ref_rules, engine="reference")
    col_summary, col_out = process_records(records, settings, col_rules, engine="columnar")
    assert col_summary == ref_summary
    ref_bytes, col_bytes = outputs_bytes(ref_out), outputs_bytes(col_out)
    for name, a, b in zip(("stats", "dead letters", "alerts"), ref_bytes, col_bytes):
        assert b == a, f"{name} differ"
    assert col_out.stats_records == ref_out.stats_records
    if isinstance(ref_rules, RecordingRules):
        assert col_rules.calls == ref_rules.calls
    return col_summary, col_out


def lines_records(lines: list[bytes], source: str = "memory"):
    return [(source, i, line) for i, line in enumerate(lines, 1)]


# -- generated logs ------------------------------------------------------------------------------
CALL_IDS = ["a", "b", "c", "d", "e", "f", "g", "h", "ca\u00e7", "\u2603x"]
TRUSTS = ["LAS", "EEAST", "SWASFT", "L\u00c4S"]
STARTS = [BASE, parse_ts("2026-01-31T22:40:00.000Z"), parse_ts("2026-03-28T23:20:00.000Z"),
          parse_ts("2026-10-24T23:30:00.000Z")]


def _ts_text(ms: int, style: int):
    """Event time as the canonical text, as integer ms, or with an offset (slow path)."""
    if style == 1:
        return ms
    frac = ms % 1000
    if style == 2:
        return f"{format_ts(ms - frac + 3_600_000)[:-1]}.{frac:03d}+01:00"
    return f"{format_ts(ms - frac)[:-1]}.{frac:03d}Z"


@st.composite
def event_dicts(draw, start: int):
    kind = draw(st.sampled_from(["call_received", "triaged", "crew_arrived"]))
    cid = draw(st.sampled_from(CALL_IDS))
    ms = start + draw(st.integers(0, 150 * 60_000))
    ms -= ms % draw(st.sampled_from([1, 1000, 60_000]))
    ev: dict = {"type": kind, "call_id": cid,
                "ts": _ts_text(ms, draw(st.sampled_from([0, 0, 0, 1, 1, 2])))}
    if kind == "call_received":
        ev["trust"] = draw(st.sampled_from(TRUSTS))
        if draw(st.integers(0, 9)) == 0:
            ev["answered_by"] = draw(st.sampled_from(TRUSTS))
    else:
        if draw(st.booleans()):
            ev["trust"] = draw(st.sampled_from(TRUSTS))
    if kind == "triaged":
        disp = draw(st.sampled_from(["dispatch"] * 6 + ["hear_and_treat", "redirect", None]))
        if disp is not None:
            ev["disposition"] = disp
        if disp in ("dispatch", None) or draw(st.booleans()):
            ev["category"] = draw(st.sampled_from(["C1", "C1", "C2", "C3", "C4"]))
        if disp == "redirect" and draw(st.booleans()):
            ev["redirect_to"] = "111"
    if kind == "crew_arrived":
        tc = draw(st.sampled_from([True, False, None]))
        if tc is not None:
            ev["transport_capable"] = tc
        if draw(st.booleans()):
            ev["resource_id"] = "R" + str(draw(st.integers(0, 3)))
    if draw(st.integers(0, 19)) == 0:
        ev[draw(st.sampled_from(["note", "extra", "type2"]))] = draw(st.sampled_from(
            [1, 2.5, "x", None, [1, {"a": 2}], {"k": "v"}, True]))
    return ev


BAD_LINES = [b"", b"   ", b"{not json", b"\xff\xfe", b"[1, 2]", b"{}", b'{"type": 5}',
             b'{"type":"crew_arrived","call_id":"a","ts":"yesterday"}',
             b'{"type":"triaged","call_id":"a","ts":1768377600000,"category":"C9"}',
             b'{"type":"triaged","call_id":"a","ts":1768377600000}',
             b'{"type":"call_received","call_id":"a","ts":1768377600000}',
             b'{"type":"crew_arrived","call_id":"a","ts":1768377600000,"transport_capable":1}',
             b'{"type":"crew_arrived","call_id":"","ts":1768377600000}',
             b'{"type":"crew_arrived","call_id":"a","ts":"2026-01-14T08:00:00.000Z",}',
             b'{"type":"crew_arrived","call_id":"a","ts":"2026-02-30T08:00:00.000Z"}',
             b'{"type":"crew_arrived","call_id":"a","ts":"2026-01-14T08:00:60.000Z"}',
             b'{"type":"crew_arrived","call_id":"a","ts":1768377600000.0}',
             b'{"type":"crew_arrived","call_id":"a","ts":17683776000000000000}',
             b'{"type":"crew_arrived","type":"triaged","call_id":"a","ts":1768377600000}']


def render(ev: dict, style: int) -> bytes:
    """One event as a line, in one of several shapes the scanner must handle or refuse."""
    if style == 0:
        return orjson.dumps(ev)
    if style == 1:
        return json.dumps(ev).encode()                       # ", " and ": ", \\u escapes
    if style == 2:
        items = list(ev.items())
        random.Random(len(items) * 7 + len(str(ev))).shuffle(items)
        return orjson.dumps(dict(items))
    if style == 3:
        return b" " + orjson.dumps(ev) + b"\t"
    if style == 4:
        return json.dumps(ev, ensure_ascii=False).encode()  # raw UTF-8
    return orjson.dumps(ev).replace(b'","', b'", "')


@st.composite
def episode(draw, start: int) -> list[dict]:
    """The events of one call: receipt, triage(s), crew arrival(s), any of them missing,
    conflicting, simultaneous or before the clock start."""
    cid = draw(st.sampled_from(CALL_IDS))
    trust = draw(st.sampled_from(TRUSTS))
    t0 = start + draw(st.integers(0, 180)) * 60_000 + draw(st.integers(0, 59_999))
    out = []
    if draw(st.integers(0, 9)):
        rec = {"type": "call_received", "call_id": cid, "ts": t0, "trust": trust}
        if draw(st.integers(0, 14)) == 0:
            rec["answered_by"] = "SECAMB"
        out.append(rec)
    t1 = t0 + draw(st.sampled_from([5_000, 40_000, 200_000, 400_000, -30_000]))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        disp = draw(st.sampled_from(["dispatch"] * 8 + ["hear_and_treat", "redirect"]))
        tri = {"type": "triaged", "call_id": cid, "ts": t1 + draw(st.sampled_from(
            [0, 0, 1_000, 90_000])), "disposition": disp}
        if disp == "dispatch" or draw(st.booleans()):
            tri["category"] = draw(st.sampled_from(["C1", "C1", "C2", "C3", "C4"]))
        out.append(tri)
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        arr = {"type": "crew_arrived", "call_id": cid,
               "ts": t1 + draw(st.sampled_from([-600_000, 60_000, 600_000, 1_500_000, 0]))
               + draw(st.integers(0, 5000)),
               "transport_capable": draw(st.sampled_from([True, True, False]))}
        out.append(arr)
    return out


@st.composite
def logs(draw):
    start = draw(st.sampled_from(STARTS))
    events = [e for ep in draw(st.lists(episode(start), max_size=14)) for e in ep]
    events += draw(st.lists(event_dicts(start), max_size=12))
    for e in events:
        if type(e["ts"]) is int and draw(st.integers(0, 3)):
            e["ts"] = _ts_text(e["ts"], draw(st.sampled_from([0, 0, 0, 1, 2])))
    lines = [render(e, draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5]))) for e in events]
    out = []
    for line in lines:
        out.append(line)
        if draw(st.integers(0, 9)) == 0:
            out.append(line)                                     # a duplicate
        if draw(st.integers(0, 14)) == 0:
            out.append(draw(st.sampled_from(BAD_LINES)))
    # delivery order: by event time plus a delay, mostly none, some within the lateness,
    # some beyond it (late), a few a day or more (past the windows, the horizon)
    keyed = []
    for i, line in enumerate(out):
        try:
            t = parse_ts(orjson.loads(line)["ts"]) or 0
        except Exception:
            t = 0
        delay = draw(st.sampled_from([0] * 8 + [30_000, 90_000, 600_000, 7_200_000,
                                             27 * 3_600_000]))
        keyed.append((t + delay, i))
    if draw(st.integers(0, 4)):
        keyed.sort()
    return [out[i] for _, i in keyed]


SETTING_CHOICES = [
    SETTINGS,
    SETTINGS.with_clock("connect"),
    processing_from_table({"episode_horizon": "40m", "allowed_lateness": "30s"}),
    processing_from_table({"bucket": "5m", "allowed_lateness": "3m",
                           "windows": [{"size": "10m", "every": "5m"},
                                       {"size": "30m", "every": "10m"}],
                           "calendar": ["day"]}),
    processing_from_table({"windows": [{"size": "3m", "every": "1m"},
                                       {"size": "2h", "every": "30m"}],
                           "calendar": ["mtd"], "timezone": "America/New_York",
                           "episode_horizon": "2h", "arp_cap": {"C2": "90s"}}),
    processing_from_table({"allowed_lateness": "0s", "calendar": []}),
    processing_from_table({"relative_accuracy": 0.005, "max_record_bytes": 256,
                           "windows": [{"size": "48h", "every": "15m"}]}),
]


@hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=logs(), which=st.integers(0, len(SETTING_CHOICES) - 1))
def test_generated_logs_give_identical_outputs(lines, which):
    summary, out = both(lines_records(lines), SETTING_CHOICES[which], rules=RecordingRules)
    for key in ("late_events", "duplicates", "after_final", "dead_letters", "too_late",
                "late_responses", "c1_without_transport", "alerts"):
        event(f"{key} > 0: {summary[key] > 0}")
    event(f"incomplete: {bool(summary['incomplete'])}")
    event(f"inconsistent: {'arrival_before_clock_start' in summary['dead_letter_reasons']}")


@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=logs())
def test_generated_logs_with_the_shipped_alert_rules(lines):
    from streams.rules import build_evaluator
    both(lines_records(lines), SETTINGS, rules=lambda: build_evaluator({}, SETTINGS))


@hsettings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), disorder=st.sampled_from([
    {}, {"duplicates": 0.03}, {"within_lateness": 0.3}, {"beyond_lateness": 0.05},
    {"malformed": 0.02}, {"duplicates": 0.02, "within_lateness": 0.2,
                          "beyond_lateness": 0.03, "malformed": 0.01}]))
def test_simulated_days_give_identical_outputs(seed, disorder):
    trusts = [TrustProfile("LAS", 900), TrustProfile("EEAST", 500, hear_and_treat=0.25,
                                                     redirect_at_receipt=0.03)]
    lines = list(generate(trusts, parse_ts("2026-03-28T12:00:00.000Z"), 1.25, seed=seed,
                          disorder=Disorder(**disorder)))
    summary, out = both(lines_records(lines), SETTINGS, rules=RecordingRules)
    assert summary["calls"] > 500 and len(out.stats_records) > 1000


# -- alert rules through the batch form ---------------------------------------------------------
def batch_only(doc: dict | None = None, exhaustive_reference: bool = False):
    """A rules factory for `both`: the reference engine's evaluator first (with
    `exhaustive_reference`, the plain one that evaluates everything), then the columnar
    engine's, which must take the batch form only (never `evaluate` per boundary)."""
    from streams.rules import AlertEvaluator, load_rules
    made = []

    def make():
        ev = AlertEvaluator(load_rules(doc or {}, SETTINGS), SETTINGS,
                            exhaustive=exhaustive_reference and not made)
        if made:
            def per_boundary(*args):
                raise AssertionError("the columnar engine called evaluate() per boundary")
            ev.evaluate = per_boundary
        made.append(ev)
        return ev
    return make


#: small scenario logs on which the shipped rules raise every kind of alert: a major incident
#: on a big trust beside one with a high hear-and-treat share and mutual aid (response means
#: and centiles, redirect shares, C1 redirects, hear-and-treat outside its band, calls waiting,
#: longest waits), and a small trust silent for six hours (a data gap whose level moves with
#: the trust's learned call rate while it fires)
SCENARIO_LOGS = {
    "major-incident": ([TrustProfile("LAS", 4300), TrustProfile("EEAST", 2500, hear_and_treat=0.42,
                                                                redirect_at_receipt=0.04)],
                       "2026-01-14T00:00:00Z", 1.0, "major-incident"),
    "data-gap": ([TrustProfile("IOW", 110), TrustProfile("NEAS", 1300)], "2026-03-28T00:00:00Z",
                 2.0, "long-gap"),
}


def scenario_lines(name: str) -> list[bytes]:
    from producers.simulate import Scenario
    trusts, start, days, scenario = SCENARIO_LOGS[name]
    if scenario == "long-gap":
        scenario = Scenario("data-gap", gap_at=0.45, gap_hours=6.0)
    return list(generate(trusts, parse_ts(start), days, seed=5, scenario=scenario,
                         disorder=Disorder(duplicates=0.01, within_lateness=0.05,
                                           beyond_lateness=0.003, malformed=0.002)))


def test_shipped_rules_on_scenario_logs_raise_every_kind_of_alert_identically():
    """The columnar engine's batch evaluation against the reference Processor calling the
    rules at every boundary: byte-identical alerts (and everything else) on scenario logs
    that raise every kind of alert the shipped rules have."""
    from streams.rules import build_evaluator
    metric_of = {r.name: r.metric.value for r in build_evaluator({}, SETTINGS).rules}
    kinds = set()
    for name in SCENARIO_LOGS:
        summary, out = both(lines_records(scenario_lines(name)), SETTINGS, rules=batch_only())
        assert summary["alerts"] == len(out.alert_records) > 20
        kinds |= {(metric_of[a["rule"]], a["status"]) for a in out.alert_records}
        if name == "data-gap":
            gaps = [a for a in out.alert_records if a["rule"] == "data_gap"]
            # the small trust's gap level is learned from its call rate and moves while firing
            assert any(a["status"] == "resolved" and a["threshold"] > 1800.0 and a["threshold"]
                       != next(f["threshold"] for f in gaps if f["fingerprint"] == a["fingerprint"]
                               and f["status"] == "firing") for a in gaps)
    assert kinds == {(m, s) for m in ("response_mean", "response_p90", "redirect_share",
                                      "c1_redirected", "hear_and_treat_share", "calls_waiting",
                                      "longest_wait", "data_gap")
                     for s in ("firing", "resolved")}


#: the lifecycle's corners on a scenario log: repeats while firing, criticals inhibiting
#: warnings, pressure and gaps over all trusts, the interim C2 mean, a band, rules on the
#: calendar day and on the window the data-gap rule learns call rates from
CORNER_RULES = {"alerts": {"defaults": {"repeat_interval": "40m"}, "rules": {
    "c2_mean_interim": {"enabled": True},
    "c2_daily": {"metric": "response_mean", "category": "C2", "warning": "12m", "window": "day",
                 "for": "0s"},
    "c3_day_p90": {"metric": "response_p90", "category": "C3", "warning": "100m",
                   "window": "24h", "for": "0s"},
    "c2_waiting": {"metric": "calls_waiting", "category": "C2", "warning": 6, "critical": 12,
                   "for": "2m", "resolve_for": "3m", "scope": ["trusts", "all"]},
    "c1_longest_wait": {"scope": ["trusts", "all"], "repeat_interval": "7m"},
    "data_gap": {"scope": ["trusts", "all"], "warning": "20m"},
    "hear_and_treat_share": {"band": ["10%", "35%"], "min_sample": 30}}}}


@pytest.mark.parametrize("name", list(SCENARIO_LOGS))
def test_lifecycle_corners_agree_with_the_plain_evaluation(name):
    """Repeats, inhibition, all-trusts pressure and gaps: the columnar engine's batch form
    raises what the reference engine raises evaluating every observation (`exhaustive`)."""
    summary, out = both(lines_records(scenario_lines(name)), SETTINGS,
                        rules=batch_only(CORNER_RULES, exhaustive_reference=True))
    alerts = out.alert_records
    assert any(a["repeat"] > 0 for a in alerts)
    assert {a["labels"]["trust"] for a in alerts if a["rule"] == "c2_waiting"} >= {"*"}
    if name == "data-gap":                    # two days: a calendar day closes inside
        assert any(a["rule"] == "c2_daily" and " on 2026-03-28 " in a["summary"] for a in alerts)
    assert any(a["rule"] == "c3_day_p90" for a in alerts)


# -- hand-made edge cases ------------------------------------------------------------------------
def ev(kind: str, cid: str, minutes: float, **extra) -> bytes:
    return orjson.dumps({"type": kind, "call_id": cid, "ts": BASE + int(minutes * 60_000),
                         **extra})


def test_exact_ties_conflicting_triage_and_duplicates_at_one_millisecond():
    lines = [ev("call_received", "a", 0, trust="LAS"),
             ev("triaged", "a", 1, category="C3"), ev("triaged", "a", 1, category="C1"),
             ev("triaged", "a", 1, category="C3"),
             ev("crew_arrived", "a", 9, resource_id="R2"),
             ev("crew_arrived", "a", 9, resource_id="R1", transport_capable=False),
             ev("crew_arrived", "a", 9, resource_id="R2"),
             ev("call_received", "b", 1, trust="EEAST"), ev("triaged", "b", 1, category="C2")]
    for order in (lines, lines[::-1], lines[3:] + lines[:3]):
        both(lines_records(order), rules=RecordingRules)


def test_arrival_before_clock_start_dead_letter_from_a_file_and_a_gzip(tmp_path):
    lines = [ev("call_received", "a", 10, trust="LAS"), ev("triaged", "a", 11, category="C2"),
             ev("crew_arrived", "a", 2), b"", b"oops",
             ev("call_received", "b", 10, trust="LAS"), ev("triaged", "b", 11, category="C1"),
             ev("crew_arrived", "b", 3, transport_capable=False)]
    (tmp_path / "a.jsonl").write_bytes(b"\r\n".join(lines[:4]) + b"\r\n\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines[4:]))           # no final newline
    runs = {}
    for engine in ("reference", "columnar"):
        out = tmp_path / engine
        runs[engine] = run_offline([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz")],
                                   out, SETTINGS, progress=False, engine=engine)
    assert runs["columnar"] == runs["reference"]
    for name in ("summary.json", "stats.jsonl", "dead_letters.jsonl", "alerts.jsonl"):
        assert (tmp_path / "columnar" / name).read_bytes() == \
            (tmp_path / "reference" / name).read_bytes(), name
    dead = [orjson.loads(x) for x in (tmp_path / "columnar" / "dead_letters.jsonl")
            .read_bytes().splitlines()]
    # the bad line is refused on arrival; an inconsistency shows once its call completes
    assert [(d["reason"], d["source"], d["line"]) for d in dead] == [
        ("malformed_json", "b.jsonl.gz", 1), ("arrival_before_clock_start", "a.jsonl", 3),
        ("arrival_before_clock_start", "b.jsonl.gz", 4)]


def test_horizon_expiry_stragglers_and_forgotten_calls():
    settings = processing_from_table({"episode_horizon": "30m"})
    lines = [ev("call_received", "a", 0, trust="LAS"), ev("triaged", "a", 1, category="C1"),
             ev("triaged", "x", 2, category="C2"), ev("call_received", "z", 45, trust="LAS"),
             ev("crew_arrived", "a", 50), ev("call_received", "a", 95, trust="LAS"),
             ev("triaged", "a", 96, category="C1"), ev("crew_arrived", "a", 99, transport_capable=False),
             ev("call_received", "y", 200, trust="EEAST"), ev("crew_arrived", "a", 240)]
    summary, _ = both(lines_records(lines), settings, rules=RecordingRules)
    assert summary["incomplete"] and summary["after_final"] >= 1


def test_late_events_in_closed_and_forgotten_windows():
    jan31 = (parse_ts("2026-01-31T10:00:00.000Z") - BASE) / 60_000
    lines = [ev("call_received", "a", jan31, trust="LAS"),
             ev("triaged", "a", jan31 + 1, category="C2"),
             ev("call_received", "y", jan31 + 180, trust="LAS"),
             ev("crew_arrived", "a", jan31 + 20),                       # 160 min late
             ev("call_received", "z", jan31 + 30 * 60, trust="LAS"),   # Feb 1, 16:00
             ev("call_received", "q", jan31 + 5, trust="EEAST"),        # a late call
             ev("call_received", "r", jan31 + 29 * 60, trust="LAS"),
             ev("triaged", "r", jan31 + 29 * 60 + 1, disposition="hear_and_treat"),
             ev("call_received", "w", jan31 + 45 * 60, trust="LAS"),   # Feb 2: Jan days go
             ev("call_received", "p", jan31 + 6, trust="LAS"),          # too late for all
             ev("call_received", "u", jan31 + 46 * 60, trust="LAS")]
    summary, _ = both(lines_records(lines), rules=RecordingRules)
    assert summary["late_events"] >= 3 and summary["too_late"] >= 1
    assert summary["late_responses"] == 1


def test_a_long_silence_skips_empty_time_like_the_reference():
    lines = [ev("call_received", "a", 0, trust="LAS"), ev("triaged", "a", 1, category="C2"),
             ev("call_received", "b", 40 * 24 * 60, trust="LAS"),
             ev("triaged", "b", 40 * 24 * 60 + 1, category="C2"),
             ev("crew_arrived", "b", 40 * 24 * 60 + 20), ev("crew_arrived", "a", 10)]
    both(lines_records(lines), rules=RecordingRules)


def test_empty_and_all_rejected_inputs():
    both([])
    both(lines_records([b"", b"{", b"[]"]))


def test_records_from_several_sources_keep_their_names_and_lines():
    recs = [("x.jsonl", 7, ev("call_received", "a", 0, trust="LAS")),
            ("y.jsonl", 3, ev("triaged", "a", 1, category="C2")),
            ("y.jsonl", 9, ev("crew_arrived", "a", 0.5)), ("x.jsonl", 8, b"nope")]
    _, out = both(recs)
    assert [(d.source, d.position) for d in out.dead_letters] == [("x.jsonl", 8), ("y.jsonl", 9)]


# -- the existing replay and core tests, through both engines ------------------------------------
def _dual_process_lines(lines, settings, rules=None, source="memory", engine="columnar"):
    recs = [(source, i, line) for i, line in enumerate(lines, 1)]
    return both(recs, settings, (lambda: rules) if rules is not None else None)


def _zero_arg_tests(module):
    for name, fn in sorted(vars(module).items()):
        if name.startswith("test_") and callable(fn):
            params = inspect.signature(fn).parameters
            if not params or hasattr(fn, "hypothesis"):
                yield name


@pytest.mark.parametrize("module, name",
                         [(core_tests, n) for n in _zero_arg_tests(core_tests)]
                         + [(replay_tests, n) for n in _zero_arg_tests(replay_tests)])
def test_existing_tests_agree_between_engines(module, name, monkeypatch):
    monkeypatch.setattr(module, "process_lines", _dual_process_lines)
    getattr(module, name)()


@pytest.mark.parametrize("clock", ["arp", "connect"])
def test_existing_exact_summary_test_through_both_engines(clock, monkeypatch):
    monkeypatch.setattr(replay_tests, "process_lines", _dual_process_lines)
    replay_tests.test_summary_equals_a_direct_exact_computation(clock)


# -- the scanner against the reference decoder ---------------------------------------------------
def scan_lines(lines: list[bytes]):
    """(code, ts, call id, trust) per line from the Numba scanner (code PENDING = refused)."""
    buf = b"".join(lines)
    lens = np.array([len(x) for x in lines], np.int64)
    ends = np.cumsum(lens)
    starts = ends - lens
    n = len(lines)
    ts = np.zeros(n, np.int64)
    code = np.zeros(n, np.uint8)
    cid = np.zeros(n, np.int32)
    trust = np.zeros(n, np.int32)
    calls, trusts = S.Interner(), S.Interner()
    calls.reserve(n, len(buf))
    trusts.reserve(n, len(buf))
    S.parse_records(np.frombuffer(buf, np.uint8).copy(), starts, ends, n, 0, 16384, ts, code, cid,
                    trust, *calls.arrays(), *trusts.arrays(), *S.scratch())
    return [(int(code[i]), int(ts[i]), calls.get(int(cid[i])),
             trusts.get(int(trust[i])) if trust[i] >= 0 else None) for i in range(n)]


def scan_stream(lines: list[bytes], sep: bytes = b"\n"):
    """The same through the file path's one-pass line scanner (`parse_lines`)."""
    buf = np.frombuffer(sep.join(lines) + sep, np.uint8).copy()
    n = len(lines)
    ts = np.zeros(n, np.int64)
    code = np.zeros(n, np.uint8)
    cid = np.zeros(n, np.int32)
    trust = np.zeros(n, np.int32)
    starts, ends, linenos, blanks = (np.zeros(n + 1, np.int64) for _ in range(4))
    calls, trusts = S.Interner(), S.Interner()
    calls.reserve(n, len(buf))
    trusts.reserve(n, len(buf))
    out = np.zeros(4, np.int64)
    cs, ce = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64)
    S.parse_lines(buf, 0, len(buf), True, 16384, 0, 0, starts, ends, linenos, blanks, ts, code,
                  cid, trust, *calls.arrays(), *trusts.arrays(), *S.scratch(), out, cs, ce)
    k = int(out[0])
    S.intern_calls(buf, cs, ce, k, 0, code, cid, *calls.arrays(), np.zeros(64, np.uint64),
                   np.zeros(64, np.bool_))
    spans = [buf[starts[i]:ends[i]].tobytes() for i in range(k)]
    return spans, [(int(code[i]), int(ts[i]), calls.get(int(cid[i])),
                    trusts.get(int(trust[i])) if trust[i] >= 0 else None) for i in range(k)]


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(evs=st.lists(event_dicts(BASE), min_size=1, max_size=20),
       styles=st.lists(st.integers(0, 5), min_size=20, max_size=20))
def test_scanner_accepts_only_what_decode_accepts_and_reads_the_same_fields(evs, styles):
    lines = [render(e, s) for e, s in zip(evs, styles)] + BAD_LINES
    spans_scanned = scan_lines(lines)
    for sep in (b"\n", b"\r\n"):
        records = [x for x in lines if x.strip()]          # blank lines are not records
        spans, streamed = scan_stream(lines, sep)
        assert spans == records and len(streamed) == len(records)
        by_line = dict(zip(lines, spans_scanned))
        for line, got in zip(records, streamed):
            # both scanners take the same lines and read the same fields
            assert got == by_line[line] or (got[0] == by_line[line][0] == S.PENDING)
    for line, (code, ts, cid, trust) in zip(lines, spans_scanned):
        if code == S.PENDING:
            continue                      # left to the Python decoder: always safe
        ref = decode(line, "s", 1)
        assert type(ref) is Event, line
        assert (code & 3) == int(ref.type) and ts == ref.ts
        assert cid == ref.call_id.encode() and trust == (ref.trust.encode() if ref.trust else None)
        if ref.category is not None:
            assert (code >> 2) & 7 == int(ref.category.value[1])
        if (code & 3) == S.ARRIVED:
            assert bool(code & S.FLAG) == ref.transport_capable
        if (code & 3) == S.RECEIVED:
            assert bool(code & S.FLAG) == (ref.answered_by != ref.trust)


def test_scanner_takes_the_canonical_shapes_itself():
    lines = list(generate([TrustProfile("LAS", 2000)], BASE, 0.1, seed=3))
    lines += [ev("triaged", "a", 1, category="C2", disposition="dispatch"),
              b'{"type": "crew_arrived", "call_id": "a", "ts": 1768377600000}']
    codes = [c for c, *_ in scan_lines(lines)]
    assert len(lines) > 300 and S.PENDING not in codes


def test_timestamp_fast_path_matches_parse_ts():
    rng = random.Random(5)
    texts = []
    for _ in range(3000):
        y, mo, d = rng.choice([2000, 2024, 2026, 2099, 2100, 1999]), rng.randint(0, 13), \
            rng.randint(0, 32)
        texts.append(f"{y:04d}-{mo:02d}-{d:02d}T{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:"
                     f"{rng.randint(0, 61):02d}.{rng.randint(0, 999):03d}Z")
    lines = [orjson.dumps({"type": "crew_arrived", "call_id": "a", "ts": t}) for t in texts]
    for t, (code, ts, _, _) in zip(texts, scan_lines(lines)):
        expected = parse_ts(t)
        if code == S.PENDING:
            assert expected is None, t
        else:
            assert ts == expected, t


# -- number formatting against Python's own ----------------------------------------------------
def test_rounded_numbers_are_written_as_python_and_orjson_write_them():
    rng = random.Random(11)
    scratch = np.zeros(1, np.float64)
    out = np.zeros(64, np.uint8)
    values = [rng.random() * 10 ** rng.randint(-5, 11) for _ in range(20000)]
    values += [x / 1000.0 for x in (0, 1, 5, 499, 500, 501, 1500, 2500, 10 ** 12)]
    values += [0.0005, 0.0015, 0.0025, 1.0005, 2.675, 1e-300, 4.99e11]
    for x in values:
        d = _round3(x, scratch)
        assert d >= 0
        n = _put_milli(out, 0, d)
        assert out[:n].tobytes() == orjson.dumps(round(x, 3)) == repr(round(x, 3)).encode(), x
    assert _round3(6e11, scratch) == -1          # beyond: the dict path takes over
    assert not math.isnan(values[0])


def test_a_crew_decades_later_and_a_long_silence_agree():
    lines = [ev("call_received", "a", 0, trust="LAS"), ev("triaged", "a", 0.1, category="C3"),
             orjson.dumps({"type": "crew_arrived", "call_id": "a",
                           "ts": "2099-12-31T23:00:00.000Z"}),
             ev("call_received", "b", 1, trust="LAS"), ev("triaged", "b", 1.1, category="C3"),
             ev("crew_arrived", "b", 30)]
    both(lines_records(lines), processing_from_table({"episode_horizon": "36500d"}),
         rules=RecordingRules)


@pytest.mark.parametrize("seed", [1, 2])
def test_dict_path_for_window_records_matches_the_text_writer(seed):
    """Numbers beyond the text writer's range go through dicts; both paths agree."""
    from streams.fast.engine import ColumnarReplay
    lines = replay_tests.small_log(seed, hours=30, duplicates=0.02, beyond_lateness=0.02)
    outs = []
    for text in (True, False):
        out = CollectingOutputs()
        replay = ColumnarReplay(SETTINGS, out, RecordingRules(), text_records=text)
        replay.add_records(lines_records(lines))
        outs.append((replay.run(), outputs_bytes(out), replay.rules.calls))
    assert outs[0] == outs[1]
    both(lines_records(lines), rules=RecordingRules)


def test_auto_engine_picks_by_size_and_the_environment_overrides(monkeypatch):
    import streams.fast.engine as fast
    runs = []
    real = fast.ColumnarReplay.run
    monkeypatch.setattr(fast.ColumnarReplay, "run", lambda self: runs.append(1) or real(self))
    small = [ev("call_received", "a", 0, trust="LAS"), ev("triaged", "a", 1, category="C2"),
             ev("crew_arrived", "a", 20)]
    summary, out = process_lines(small, SETTINGS)
    assert runs == []                                  # small: the reference engine
    monkeypatch.setenv("CALLSTREAM_REPLAY_ENGINE", "columnar")
    col, col_out = process_lines(small, SETTINGS)
    assert runs == [1] and col == summary and col_out.stats_records == out.stats_records
    monkeypatch.delenv("CALLSTREAM_REPLAY_ENGINE")
    import streams.replay as replay
    monkeypatch.setattr(replay, "SMALL_INPUT", 2)
    process_lines(small, SETTINGS)
    assert runs == [1, 1]                              # large: the columnar engine
    with pytest.raises(ValueError, match="engine"):
        process_lines(small, SETTINGS, engine="turbo")
    monkeypatch.setenv("CALLSTREAM_REPLAY_ENGINE", "turbo")
    from streams.errors import CallstreamError
    with pytest.raises(CallstreamError, match="CALLSTREAM_REPLAY_ENGINE"):
        process_lines(small, SETTINGS)


def test_cli_replay_uses_the_columnar_engine_and_matches_the_reference(tmp_path, monkeypatch):
    lines = replay_tests.small_log(4, hours=5, malformed=0.01, duplicates=0.02,
                                   beyond_lateness=0.02)
    log = tmp_path / "day.jsonl.gz"
    with gzip.open(log, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    monkeypatch.setenv("CALLSTREAM_REPLAY_ENGINE", "columnar")
    r = replay_tests.cli("replay", "--offline", str(log), "--out", str(tmp_path / "cli"))
    assert r.returncode == 0, r.stderr
    run_offline([str(log)], tmp_path / "ref", SETTINGS, progress=False, engine="reference")
    from streams.replay import load_settings_and_rules
    _, rules = load_settings_and_rules(None, None)
    run_offline([str(log)], tmp_path / "ref_rules", SETTINGS, rules=rules, progress=False,
                engine="reference")
    for name in ("summary.json", "stats.jsonl", "dead_letters.jsonl", "alerts.jsonl"):
        assert (tmp_path / "cli" / name).read_bytes() == \
            (tmp_path / "ref_rules" / name).read_bytes(), name
    assert (tmp_path / "cli" / "stats.jsonl").read_bytes() == \
        (tmp_path / "ref" / "stats.jsonl").read_bytes()


def test_memory_columns_are_compact(tmp_path):
    """The engine keeps ~21 bytes of columns per record, not the records themselves."""
    from streams.fast.engine import ColumnarReplay
    log = tmp_path / "a.jsonl"
    log.write_bytes(b"\n".join(replay_tests.small_log(6, hours=6)) + b"\n")
    replay = ColumnarReplay(SETTINGS, CollectingOutputs())
    replay.add_file(Path(log))
    cols = replay.cols
    per_record = sum(getattr(cols, a).itemsize for a in ("ts", "code", "cid", "trust", "rel"))
    assert per_record == 21 and cols.ts.shape[0] <= 1.25 * cols.n + 4096
    assert replay.records == cols.n > 100


def test_corrupt_gzip_is_the_same_clear_error_in_both_engines(tmp_path, monkeypatch):
    log = tmp_path / "a.jsonl.gz"
    data = gzip.compress(b"\n".join(replay_tests.small_log(1, hours=6)) + b"\n")
    log.write_bytes(data[: len(data) // 2])
    messages = []
    for engine in ("columnar", "reference"):
        monkeypatch.setenv("CALLSTREAM_REPLAY_ENGINE", engine)
        r = replay_tests.cli("replay", "--offline", str(log), "--out", str(tmp_path / engine))
        assert r.returncode != 0 and "Traceback" not in r.stderr
        messages.append(r.stderr.strip())
    assert messages[0] == messages[1] and "could not be read past line" in messages[0]


def test_progress_bar_on_the_columnar_path(tmp_path, capsys):
    log = tmp_path / "a.jsonl"
    log.write_bytes(b"\n".join(replay_tests.small_log(2, hours=3)) + b"\n")
    summary = run_offline([str(log)], tmp_path / "o", SETTINGS, progress=True, engine="columnar")
    err = capsys.readouterr().err
    assert "processing" in err and f"{summary['events']:,} events" in err


@hsettings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), n_trusts=st.integers(1, 3),
       cut=st.integers(1, 60))
def test_waiting_sweep_counts_and_longest_waits(seed, n, n_trusts, cut):
    """The rules' calls waiting and longest waits per boundary (an incremental sweep over the
    join's waiting intervals, run in pieces) against counting the open intervals directly."""
    from streams.fast.alerts import WaitingSweep
    from streams.fast.join import OPEN_END
    rng = np.random.default_rng(seed)
    n_bound = 80
    ends = (np.arange(1, n_bound + 1) * 60_000).astype(np.int64)
    opened = np.sort(rng.integers(0, n_bound, n))
    closed = np.where(rng.random(n) < 0.1, OPEN_END, opened + rng.integers(0, 30, n))
    keys = rng.integers(0, n_trusts * 4, n)
    starts = ends[opened] - rng.integers(-30_000, 900_000, n)     # some start after the end
    IV = np.stack([keys, starts, opened, closed], axis=1).astype(np.int64)
    sweep = WaitingSweep(IV, n_trusts * 4)
    parts = [sweep.run(ends, a, min(a + cut, n_bound)) for a in range(0, n_bound, cut)]
    waiting = np.concatenate([p[0] for p in parts], axis=2)
    longest = np.concatenate([p[1] for p in parts], axis=2)
    for j in range(n_bound):
        for c in range(4):
            total, top = 0, 0
            for t in range(n_trusts):
                open_now = [int(s) for k, s, a, b in IV.tolist() if k == t * 4 + c and a <= j < b]
                wait = max(0, int(ends[j]) - min(open_now)) if open_now else 0
                assert waiting[c, t, j] == len(open_now) and longest[c, t, j] == wait
                total, top = total + len(open_now), max(top, wait)
            assert waiting[c, n_trusts, j] == total and longest[c, n_trusts, j] == top
