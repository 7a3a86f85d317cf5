"""Unit tests of the processing core: decoding, the episode join, clocks, windows."""

from __future__ import annotations

import base64

import orjson
import pytest

from streams.events import Event, EventType, Rejection, decode
from streams.replay import process_lines
from streams.settings import ConfigError, ProcessingSettings, parse_duration_ms, processing_from_table
from tests.helpers import arrived, at, received, triaged

S = ProcessingSettings()


def run(lines, settings=S):
    summary, out = process_lines(lines, settings)
    return summary, out


# -- decoding ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'{"call_id": "a", "ts": 1768377600000}', "missing_field"),
    (b'{"type": "crew_left", "call_id": "a", "ts": 1768377600000}', "unknown_type"),
    (b'{"type": "crew_arrived", "ts": 1768377600000}', "missing_field"),
    (b'{"type": "crew_arrived", "call_id": 7, "ts": 1768377600000}', "bad_field"),
    (b'{"type": "crew_arrived", "call_id": "", "ts": 1768377600000}', "bad_field"),
    (b'{"type": "crew_arrived", "call_id": "' + b"x" * 65 + b'", "ts": 1768377600000}', "bad_field"),
    (b'{"type": "crew_arrived", "call_id": "a"}', "missing_field"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": "yesterday"}', "bad_timestamp"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": "2026-01-14T08:00:00"}', "bad_timestamp"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": 12.5}', "bad_timestamp"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": true}', "bad_timestamp"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": 99}', "bad_timestamp"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": 1768377600000, "transport_capable": "yes"}', "bad_field"),
    (b'{"type": "call_received", "call_id": "a", "ts": 1768377600000}', "missing_field"),
    (b'{"type": "call_received", "call_id": "a", "ts": 1768377600000, "trust": 5}', "bad_field"),
    (b'{"type": "call_received", "call_id": "a", "ts": 1768377600000, "trust": "' + b"T" * 17 + b'"}', "bad_field"),
    (b'{"type": "triaged", "call_id": "a", "ts": 1768377600000}', "missing_field"),
    (b'{"type": "triaged", "call_id": "a", "ts": 1768377600000, "category": "C5"}', "unknown_category"),
    (b'{"type": "triaged", "call_id": "a", "ts": 1768377600000, "category": "C2", "disposition": "ignore"}', "bad_field"),
    (b'{"type": "crew_arrived", "call_id": "a", "ts": 1768377600000, "pad": "' + b"x" * 20000 + b'"}', "oversized"),
])
def test_every_rejection_has_its_reason(raw, reason):
    result = decode(raw, "src", 3)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


def test_decode_accepts_both_time_forms_and_defaults():
    a = decode(b'{"type":"call_received","call_id":"x","ts":"2026-01-14T09:00:00+01:00","trust":"LAS","extra":[1]}', "s", 1)
    b = decode(b'{"type":"call_received","call_id":"x","ts":1768377600000,"trust":"LAS"}', "s", 2)
    assert isinstance(a, Event) and isinstance(b, Event)
    assert a.ts == b.ts == at(0)
    assert a.answered_by == "LAS"          # default = trust
    t = decode(b'{"type":"triaged","call_id":"x","ts":1768377600000,"disposition":"hear_and_treat"}', "s", 3)
    assert t.type is EventType.TRIAGED and t.category is None
    c = decode(b'{"type":"crew_arrived","call_id":"x","ts":1768377600000}', "s", 4)
    assert c.transport_capable is True


def test_dead_letter_keeps_original_bytes_source_and_line():
    _, out = run([received("a", 0), b'{"type":"oops"}', b"\xffbroken"])
    letters = [orjson.loads(d.to_json()) for d in out.dead_letters]
    assert [d["reason"] for d in letters] == ["unknown_type", "malformed_json"]
    assert letters[0] == {"reason": "unknown_type", "detail": letters[0]["detail"],
                          "source": "memory", "line": 2, "raw": '{"type":"oops"}'}
    assert letters[1]["line"] == 3 and letters[1]["raw"] == "\\xffbroken"
    assert base64.b64decode(letters[1]["raw_base64"]) == b"\xffbroken"


# -- the join and the clock ------------------------------------------------------------------
def cats(summary):
    return {c: v["count"] for c, v in summary["categories"].items() if v["count"]}


def test_arp_clock_uses_triage_or_capped_connect():
    # C2 triaged after 1 min (cap 4 min): clock starts at triage
    s, _ = run([received("a", 0), triaged("a", 1, "C2"), arrived("a", 21)])
    assert s["categories"]["C2"]["mean_s"] == 1200.0
    # C2 triaged after 6 min: clock starts at connect + 240 s
    s, _ = run([received("a", 0), triaged("a", 6, "C2"), arrived("a", 21)])
    assert s["categories"]["C2"]["mean_s"] == 21 * 60 - 240
    # C1 cap is 30 s
    s, _ = run([received("a", 0), triaged("a", 2, "C1"), arrived("a", 8)])
    assert s["categories"]["C1"]["mean_s"] == 8 * 60 - 30


def test_connect_clock_starts_at_call_received():
    s, _ = run([received("a", 0), triaged("a", 6, "C2"), arrived("a", 21)], S.with_clock("connect"))
    assert s["categories"]["C2"]["mean_s"] == 21 * 60


def test_configurable_caps():
    settings = processing_from_table({"arp_cap": {"C2": "60s"}})
    s, _ = run([received("a", 0), triaged("a", 6, "C2"), arrived("a", 21)], settings)
    assert s["categories"]["C2"]["mean_s"] == 21 * 60 - 60


def test_arrival_before_triage_and_triage_before_call():
    s, _ = run([arrived("a", 5), triaged("a", 6, "C1"), received("a", 0)])
    assert s["categories"]["C1"]["mean_s"] == 5 * 60 - 30
    s, _ = run([triaged("b", -0.5, "C2"), received("b", 0), arrived("b", 10)])
    assert s["categories"]["C2"]["mean_s"] == 10.5 * 60


def test_input_order_does_not_matter_within_lateness():
    lines = [received("a", 0), triaged("a", 0.5, "C2"), arrived("a", 1.5)]  # all within 2 min
    a, out_a = run(lines)
    b, out_b = run(list(reversed(lines)))
    assert a == b
    assert out_a.stats_records == out_b.stats_records


def test_duplicates_are_counted_once():
    lines = [received("a", 0), received("a", 0), triaged("a", 1, "C2"), triaged("a", 1, "C2"),
             arrived("a", 11), arrived("a", 11)]
    s, _ = run(lines)
    assert s["calls"] == 1 and cats(s) == {"C2": 1}
    # copies seen before the call is decided are duplicates; after it, `after_final`
    assert s["duplicates"] == 2 and s["after_final"] == 1


def test_recategorisation_latest_triage_wins():
    s, _ = run([received("a", 0), triaged("a", 1, "C3"), triaged("a", 3, "C1"), arrived("a", 9)])
    assert cats(s) == {"C1": 1, "C1T": 1}
    # clock start = first triage (the problem was identified then), C1 cap applies
    assert s["categories"]["C1"]["mean_s"] == 8 * 60 + 30


def test_conflicting_triage_at_same_time_is_resolved_deterministically():
    lines = [received("a", 0), triaged("a", 1, "C3"), triaged("a", 1, "C2"), arrived("a", 9)]
    a, _ = run(lines)
    b, _ = run([lines[0], lines[2], lines[1], lines[3]])
    assert cats(a) == cats(b) and sum(cats(a).values()) == 1


def test_arrival_before_clock_start_is_dead_lettered():
    lines = [received("a", 10), triaged("a", 11, "C2"), arrived("a", 2)]
    s, out = run(lines)
    assert cats(s) == {}
    assert s["dead_letters"] == 1
    letter = out.dead_letters[0]
    assert letter.reason == "arrival_before_clock_start" and letter.raw == lines[2]
    assert letter.position == 3


def test_hear_and_treat_then_a_crew_anyway():
    s, _ = run([received("a", 0), triaged("a", 2, None, "hear_and_treat"), arrived("a", 30)])
    assert s["hear_and_treat"] == 1 and cats(s) == {} and s["after_final"] == 1


def test_redirect_by_both_routes():
    s, out = run([received("a", 0, answered_by="SECAMB"), triaged("a", 1, "C2"),
                  received("b", 0), triaged("b", 2, "C1", "redirect", redirect_to="SECAMB")])
    assert s["redirected"] == 2 and s["calls"] == 2 and cats(s) == {}
    all_1h = [r for r in out.stats_records if r["window"] == "1h" and r["category"] == "ALL"
              and r["trust"] == "LAS"]
    assert all_1h[0]["redirected"] == 2 and all_1h[0]["redirected_c1"] == 1


def test_c1t_from_first_transport_capable_arrival():
    s, _ = run([received("a", 0), triaged("a", 0.2, "C1"), arrived("a", 5, False),
                arrived("a", 9, True)])
    assert s["categories"]["C1"]["mean_s"] == 5 * 60 - 12
    assert s["categories"]["C1T"]["mean_s"] == 9 * 60 - 12
    s, _ = run([received("a", 0), triaged("a", 0.2, "C1"), arrived("a", 5, False)])
    assert cats(s) == {"C1": 1} and s["c1_without_transport"] == 1


def test_incomplete_episodes_are_reported_with_reasons():
    lines = [received("a", 0), triaged("b", 0, "C2"), received("c", 0), triaged("c", 1, "C2"),
             arrived("d", 5)]
    s, _ = run(lines)
    assert s["incomplete"] == {"no_call_received": 2, "no_crew_arrival": 1, "no_triage": 1}


def test_horizon_releases_open_episodes_in_event_time():
    settings = processing_from_table({"episode_horizon": "1h"})
    # `a` is released at 60 min; its crew at 100 min is a straggler, not a new call
    s, _ = run([received("a", 0), triaged("a", 1, "C3"), received("z", 90), arrived("a", 100)],
               settings)
    assert s["incomplete"] == {"no_crew_arrival": 1, "no_triage": 1}
    assert s["after_final"] == 1 and cats(s) == {}


def test_late_event_is_counted_and_still_used():
    # lateness 2 min: the arrival of `a` comes after the watermark passed 40 min
    lines = [received("a", 0), triaged("a", 1, "C2"), received("b", 60), arrived("a", 20)]
    s, out = run(lines)
    assert s["late_events"] == 1 and cats(s) == {"C2": 1} and s["late_responses"] == 1
    day = [r for r in out.stats_records if r["window"] == "day" and r["category"] == "C2"
           and r["trust"] == "LAS"]
    assert day[0]["count"] == 1 and day[0]["late"] == 1


def test_late_call_lands_in_its_closed_bucket_and_windows():
    # `b` is received 10 min after the watermark passed it: late, but counted in its windows
    lines = [received("a", 0), received("z", 30), received("b", 18)]
    s, out = run(lines)
    assert s["late_events"] == 1 and s["too_late"] == 0
    q = [r for r in out.stats_records if r["window"] == "15m" and r["category"] == "ALL"
         and r["trust"] == "LAS"]
    assert [(r["start"], r["calls"]) for r in q] == [("2026-01-14T08:00:00Z", 1),
                                                     ("2026-01-14T08:15:00Z", 1),
                                                     ("2026-01-14T08:30:00Z", 1)]


def test_empty_input():
    s, out = run([])
    assert s["events"] == 0 and s["calls"] == 0 and out.stats_records == []


# -- windows --------------------------------------------------------------------------------
def test_response_belongs_to_the_bucket_of_its_clock_stop():
    s, out = run([received("a", 0), triaged("a", 1, "C2"), arrived("a", 14.5),
                  received("b", 0), triaged("b", 1, "C2"), arrived("b", 15.5)])
    w = [r for r in out.stats_records if r["window"] == "15m" and r["category"] == "C2"
         and r["trust"] == "LAS" and r["count"]]
    assert [(r["start"], r["count"]) for r in w] == [("2026-01-14T08:00:00Z", 1),
                                                      ("2026-01-14T08:15:00Z", 1)]


def test_window_record_fields_and_all_trusts():
    lines = []
    for i in range(10):
        trust = "LAS" if i % 2 else "EEAST"
        lines += [(i, received(f"c{i}", i, trust)), (i + 1, triaged(f"c{i}", i + 1, "C2")),
                  (2 * i + 2, arrived(f"c{i}", 2 * i + 2))]
    s, out = run([line for _, line in sorted(lines)])
    assert s["late_events"] == 0
    hour = [r for r in out.stats_records if r["window"] == "1h"
            and r["end"] == "2026-01-14T09:00:00Z" and r["category"] == "C2"]
    by_trust = {r["trust"]: r for r in hour}
    assert set(by_trust) == {"*", "LAS", "EEAST"}
    star = by_trust["*"]
    assert star["count"] == 10 and star["mean_s"] == 330.0 and star["max_s"] == 600.0
    for key in ("window", "start", "end", "trust", "category", "count", "mean_s", "p50_s",
                "p90_s", "p99_s", "max_s"):
        assert key in star
    assert abs(star["p90_s"] - 540) <= 5.4
    totals = [r for r in out.stats_records if r["window"] == "1h" and r["category"] == "ALL"
              and r["end"] == "2026-01-14T09:00:00Z"]
    assert {r["trust"]: r["calls"] for r in totals} == {"*": 10, "LAS": 5, "EEAST": 5}


def test_pressure_waiting_calls_and_longest_wait():
    lines = [received("a", 0), triaged("a", 0.1, "C1"), received("b", 5), triaged("b", 5.1, "C1"),
             received("z", 40)]
    _, out = run(lines)
    rec = [r for r in out.stats_records if r["window"] == "15m" and r["category"] == "C1"
           and r["trust"] == "LAS" and r["end"] == "2026-01-14T08:15:00Z"][0]
    assert rec["waiting"] == 2 and rec["longest_wait_s"] == 15 * 60 - 6
    assert rec["count"] == 0


def test_calendar_day_in_london_time():
    # 2026-07-01 00:30 BST = 2026-06-30T23:30Z: belongs to the local day 1 July
    summer = [b'{"type":"call_received","call_id":"s","ts":"2026-06-30T23:30:00.000Z","trust":"LAS"}',
              b'{"type":"triaged","call_id":"s","ts":"2026-06-30T23:31:00.000Z","category":"C3"}',
              b'{"type":"crew_arrived","call_id":"s","ts":"2026-06-30T23:50:00.000Z"}']
    _, out = run(summer)
    day = [r for r in out.stats_records if r["window"] == "day" and r["category"] == "C3"
           and r["trust"] == "LAS"]
    assert len(day) == 1 and day[0]["date"] == "2026-07-01"
    assert day[0]["start"] == "2026-06-30T23:00:00Z" and day[0]["end"] == "2026-07-01T23:00:00Z"
    mtd = [r for r in out.stats_records if r["window"] == "mtd" and r["category"] == "C3"
           and r["trust"] == "LAS"]
    assert mtd[0]["start"] == "2026-06-30T23:00:00Z" and mtd[0]["count"] == 1


# -- settings --------------------------------------------------------------------------------
def test_durations():
    assert parse_duration_ms("90s", "x") == 90_000
    assert parse_duration_ms("2m", "x") == 120_000
    assert parse_duration_ms("1h", "x") == 3_600_000
    assert parse_duration_ms(30, "x") == 30_000
    with pytest.raises(ConfigError, match="bad duration"):
        parse_duration_ms("soon", "x")


@pytest.mark.parametrize("table, message", [
    ({"clock": "wall"}, "clock must be"),
    ({"nonsense": 1}, "unknown key 'nonsense'"),
    ({"allowed_lateness": "abc"}, "bad duration"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"windows": [{"size": "10m", "every": "3m"}]}, "multiple"),
    ({"arp_cap": {"C9": "1m"}}, "unknown category"),
])
def test_bad_processing_settings_have_clear_messages(table, message):
    with pytest.raises(ConfigError, match=message):
        processing_from_table(table)


def test_hour_panes_from_quarter_hour_panes_equal_hour_panes_from_buckets():
    """The 24 h window reads hour panes; an hour pane is made of its four quarter-hour panes
    when all were made, else of its buckets (before the first close). Either way, with late
    responses added after panes were made, every record is what the buckets alone give."""
    from streams.windows import WindowStore

    def run(via_quarters: bool) -> list[dict]:
        store = WindowStore(ProcessingSettings())
        if not via_quarters:
            store.pane_sizes = [s for s in store.pane_sizes if s == 3_600_000] + \
                [s for s in store.pane_sizes if s != 3_600_000]   # hour panes built first
        h = 3_600_000
        m = 60_000
        t0 = 1768377600000 + 10 * h                         # 10:00
        store.add_response("LAS", "C2", t0 + 5 * m, 1000)   # before the first close (10:20)
        out = []
        for k in range(20, 180):
            end = t0 + k * m
            store.add_response("LAS", "C2", end - m + 10, 2000 + k)
            if k % 7 == 0:
                store.add_response("LAS", "C2", end - 20 * m, 5000 + k)   # late, into panes
            store.add_total("LAS", end - m, 0)
            out += store.close(end, lambda: {})
        return out

    built = run(True)
    assert built == run(False)
    day = [r for r in built if r["window"] == "24h" and r["category"] == "C2"
           and r["trust"] == "LAS"]
    # at 11:00: the early one, one per close from 10:20 to 11:00, the late ones until then
    assert len(day) == 2 and day[0]["count"] == 1 + 41 + 6 and day[0]["late"] == 6



def test_window_store_restored_from_value_panes_gives_the_same_records():
    """Snapshots taken before `Span` hold panes and days as value `Pane`s and no trust ids.
    Restored, such a store adds late responses and totals to those panes and builds windows
    from them and from new spans alike: every record equals the uninterrupted store's."""
    import pickle

    from streams.windows import Pane, WindowStore

    h, m = 3_600_000, 60_000
    t0 = 1768377600000 + 14 * h                          # 22:00: a midnight within the run
    trusts = ("LAS", "YAS", "NWAS")
    cats = ("C1", "C1T", "C2", "C3", "C4")
    responses: list[tuple] = []                          # (trust, cat, bucket, ms, late)
    totals: list[tuple] = []                             # (trust, bucket, which)

    def feed(store: WindowStore, k: int, end: int, record: bool) -> None:
        adds = [(trusts[k % 3], cats[k % 5], end - m + 10, 0 if k % 11 == 0 else 1000 * k + 7)]
        calls = [(trusts[k % 3], end - m, k % 4)]
        if k % 9 == 0:                                   # late: into closed buckets and panes
            adds.append((trusts[(k + 1) % 3], cats[(k + 2) % 5], end - 40 * m, 77 * k))
            calls.append(("SCAS", end - 50 * m, 1))      # a trust first seen late
        for trust, cat, stop, ms in adds:
            store.add_response(trust, cat, stop, ms)
            if record:
                responses.append((trust, cat, stop - stop % m, ms, stop < end - m))
        for trust, ts, which in calls:
            store.add_total(trust, ts, which)
            if record:
                totals.append((trust, ts - ts % m, which))

    def value_pane(lo: int, hi: int) -> Pane:
        """What an older store held for [lo, hi): every response and total added so far."""
        import numpy as np
        pane = Pane()
        for trust, cat, b, ms, late in responses:
            if lo <= b < hi:
                pane.values.setdefault((trust, cat), []).append(ms)
                if late:
                    pane.late[(trust, cat)] = pane.late.get((trust, cat), 0) + 1
        pane.values = {k: np.array(v, dtype=np.int64) for k, v in pane.values.items()}
        for trust, b, which in totals:
            if lo <= b < hi:
                pane.add_total(trust, which)
        return pane

    a, b = WindowStore(ProcessingSettings()), WindowStore(ProcessingSettings())
    out_a, out_b = [], []
    for k in range(1, 400):
        end = t0 + k * m
        feed(a, k, end, True)
        feed(b, k, end, False)
        out_a += a.close(end, lambda: {})
        out_b += b.close(end, lambda: {})
        if k == 150:                                     # 00:30: after a day was made
            state = dict(b.__dict__)
            state["panes"] = {size: {s: value_pane(s, s + size) for s in panes}
                              for size, panes in b.panes.items()}
            state["days"] = {s: value_pane(s, s + 24 * h) for s in b.days}
            del state["trust_ids"], state["trust_names"]
            b = WindowStore.__new__(WindowStore)
            b.__setstate__(state)
            b = pickle.loads(pickle.dumps(b))
            assert b.days and all(type(d) is Pane for d in b.days.values())
    assert out_b == out_a
    assert {r["window"] for r in out_a} >= {"15m", "1h", "24h", "day", "mtd"}
    assert any(r.get("late") for r in out_a[len(out_a) // 2:])
    assert any(r["trust"] == "SCAS" for r in out_a[len(out_a) // 2:])


def test_spans_summed_from_panes_give_the_sketch_answers_of_all_their_values():
    """A window's figures come from its panes' spans added up: count, sum, extremes and the
    centiles (`span_quantiles`) equal what the values themselves give (`segment_quantiles`,
    the sketch's own answers), with zeros, ties and values far apart."""
    import numpy as np

    from streams.fast.spans import span_quantiles
    from streams.sketch import _mapping, segment_quantiles
    from streams.windows import Pane, WindowStore

    rng = np.random.default_rng(7)
    store = WindowStore(ProcessingSettings())
    cats = ("C1", "C1T", "C2", "C3", "C4")
    panes, everything = [], {}
    for p in range(6):                                   # six panes, each of a few buckets
        buckets = []
        for _ in range(3):
            b = Pane()
            for _ in range(int(rng.integers(0, 40))):
                key = (("LAS", "YAS")[int(rng.integers(0, 2))], cats[int(rng.integers(0, 5))])
                ms = int(rng.choice([0, 1, 999, 1000, 1001, int(rng.integers(1, 10**8))]))
                b.values.setdefault(key, []).append(ms)
                everything.setdefault(key, []).append(ms)
            buckets.append(b)
        panes.append(store._span(buckets))
    window = store._span(panes[:3] + [store._span(panes[3:])])
    qs = np.array([0.0, 0.5, 0.9, 0.99, 1.0])
    got = span_quantiles(window.stat, window.ext, window.hist, np.int64(window.base), qs,
                         _mapping(store.accuracy).reps)
    assert everything
    for key, vals in everything.items():
        row = store._row(key)
        v = np.array(vals, np.int64)
        want = segment_quantiles(v / 1000.0, np.array([0, len(v)]), qs)[0]
        assert window.stat[row].tolist()[:2] == [len(v), int(v.sum())]
        assert window.ext[row].tolist() == [int(v.max()), -int(v.min())]
        assert got[row].tolist() == want.tolist(), key
    empty = [r for r in range(window.stat.shape[0]) if not window.stat[r, 0]]
    assert all(np.isnan(got[r]).all() for r in empty)
