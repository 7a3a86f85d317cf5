"""Alert rules: each rule kind fires and resolves at the right event time on crafted logs;
hysteresis, `for`, minimum samples, inhibition, repeats, fingerprints; config validation."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st

from streams.replay import process_lines, run_offline
from streams.rules import (AlertEvaluator, ConfigError, build_evaluator, fingerprint, load_rules,
                           say_duration)
from streams.settings import ProcessingSettings
from streams.timefmt import format_ts
from tests.helpers import arrived, at, received, triaged

SETTINGS = ProcessingSettings()


def only(rules: dict, defaults: dict | None = None) -> dict:
    """A config document with just these rules (the shipped ones left out)."""
    alerts = {"include_defaults": False, "rules": rules}
    if defaults:
        alerts["defaults"] = defaults
    return {"alerts": alerts}


def replay(lines, doc: dict, settings: ProcessingSettings = SETTINGS) -> list[dict]:
    summary, out = process_lines(lines, settings, build_evaluator(doc, settings))
    assert summary["alerts"] == len(out.alert_records)
    return out.alert_records


def changes(alerts) -> list[tuple[str, str, str, str]]:
    """(event time, status, trust, severity) of each alert record."""
    return [(a["at"][11:16], a["status"], a["labels"]["trust"], a["labels"]["severity"])
            for a in alerts]


def response_log(blocks, trust="LAS", category="C2", every_min=1.0, prefix="r"):
    """Calls whose crews arrive every `every_min` minutes; `blocks` is a list of
    (first stop minute, last stop minute (excluded), response minutes)."""
    lines, n = [], 0
    for first, last, minutes in blocks:
        for stop in np.arange(first, last, every_min):
            cid = f"{prefix}{trust}{n}"
            n += 1
            start = float(stop) - minutes
            lines += [received(cid, start, trust), triaged(cid, start, category),
                      arrived(cid, float(stop))]
    return sorted(lines, key=lambda line: orjson.loads(line)["ts"])


# --------------------------------------------------------------------------------------------
# Response targets
# --------------------------------------------------------------------------------------------

C2_MEAN = {"c2_mean": {"metric": "response_mean", "category": "C2", "warning": "18m",
                       "for": "15m", "resolve_for": "30m"}}


def test_response_mean_fires_and_resolves_at_the_right_event_times():
    # stops every minute: 25-minute responses 08:00-10:00, then 10-minute ones until 13:00
    log = response_log([(0, 120, 25), (120, 300, 10)])
    alerts = replay(log, only(C2_MEAN))
    # 08:15 has 15 responses (< 20: no verdict); 08:30 breaches -> pending; 08:45 fires.
    # 10:30's hour mean is 17.5 min: under 18 but not by the 5% margin, so it stays firing;
    # 10:45 is clear (13.75 min) -> resolving; clear for 30 min at 11:15 -> resolved.
    assert changes(alerts) == [("08:45", "firing", "*", "warning"),
                               ("08:45", "firing", "LAS", "warning"),
                               ("11:15", "resolved", "*", "warning"),
                               ("11:15", "resolved", "LAS", "warning")]
    fire = alerts[1]
    assert fire["value"] == 1500.0 and fire["threshold"] == 1080.0 and fire["unit"] == "seconds"
    assert fire["starts_at"] == format_ts(at(45)) and fire["ends_at"] is None
    assert fire["labels"] == {"alertname": "c2_mean", "trust": "LAS", "category": "C2",
                              "severity": "warning", "window": "1h"}
    assert fire["summary"] == ("C2 mean response 25 min over the last hour in LAS, above the "
                               "18 min target (45 responses).")
    done = alerts[3]
    assert done["starts_at"] == fire["starts_at"] and done["ends_at"] == format_ts(at(195))
    assert done["fingerprint"] == fire["fingerprint"]
    assert "back within the 18 min target" in done["summary"]


def test_minimum_sample_size_is_respected():
    # one response every 4 minutes: 15 per hour, all 25 minutes long
    log = response_log([(0, 300, 25)], every_min=4)
    assert replay(log, only(C2_MEAN)) == []
    relaxed = {"c2_mean": {**C2_MEAN["c2_mean"], "min_sample": 10}}
    assert [c[1] for c in changes(replay(log, only(relaxed)))] == ["firing", "firing"]


def test_p90_rule_uses_the_windows_centile():
    # 90 % of C1 responses at 8 min, 10 % at 20 min: 90th centile is 8 min (numpy "lower")
    # then 30 % at 20 min: 90th centile 20 min > 15 min target
    lines = []
    for i, stop in enumerate(range(0, 120)):
        slow = (i % 10 == 0) if stop < 60 else (i % 10 < 3)
        minutes = 20 if slow else 8
        cid = f"c1-{i}"
        lines += [received(cid, stop - minutes), triaged(cid, stop - minutes, "C1"),
                  arrived(cid, stop)]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    doc = only({"c1_p90": {"metric": "response_p90", "category": "C1", "warning": "15m",
                           "for": "0m", "scope": ["trusts"]}})
    alerts = replay(lines, doc)
    assert changes(alerts) == [("09:15", "firing", "LAS", "warning")]
    assert 1188 <= alerts[0]["value"] <= 1212          # 20 min within the sketch's 1 %
    assert "C1 90th-centile response 20 min" in alerts[0]["summary"]


def test_no_flapping_on_a_value_oscillating_around_the_target():
    # 15-minute blocks alternate 18.5-minute and 17.5-minute responses for 6 hours
    blocks = [(q * 15, q * 15 + 15, 18.5 if q % 2 == 0 else 17.5) for q in range(24)]
    log = response_log(blocks)
    base = {"metric": "response_mean", "category": "C2", "warning": "18m", "window": "15m",
            "for": "0m", "resolve_for": "0m", "scope": ["trusts"], "min_sample": 10}
    steady = replay(log, only({"c2_mean": base}))
    assert changes(steady) == [("08:15", "firing", "LAS", "warning")]
    # without the hysteresis margin the same data flaps at every window: the margin matters
    flappy = replay(log, only({"c2_mean": {**base, "margin": 0.0}}))
    assert len(flappy) >= 20 and changes(flappy)[1][1] == "resolved"


def test_replay_speed_and_batching_do_not_change_alerts():
    log = response_log([(0, 120, 25), (120, 300, 10)], trust="LAS") + \
        response_log([(0, 300, 19)], trust="EEAST", prefix="e")
    log.sort(key=lambda line: orjson.loads(line)["ts"])
    doc = only(C2_MEAN)
    reference = replay(log, doc)
    assert reference
    rng = np.random.default_rng(7)
    ts = np.array([orjson.loads(line)["ts"] for line in log])
    jittered = ts + rng.integers(0, SETTINGS.allowed_lateness_ms // 2, size=len(log))
    shuffled = [log[i] for i in np.argsort(jittered, kind="stable")]
    assert shuffled != log
    assert replay(shuffled, doc) == reference


# --------------------------------------------------------------------------------------------
# Redirects and hear-and-treat
# --------------------------------------------------------------------------------------------

def share_log(blocks, calls_per_block=100, trust="LAS"):
    """15-minute blocks of calls; per block, (redirect share, hear-and-treat share).
    Redirects alternate the two routes of CONTRACT §1."""
    lines, n = [], 0
    for b, (redirect, hear) in enumerate(blocks):
        n_red = int(round(redirect * calls_per_block))
        n_ht = int(round(hear * calls_per_block))
        for i in range(calls_per_block):
            t = b * 15 + i * 15 / calls_per_block
            cid = f"s{n}"
            n += 1
            if i < n_red and i % 2 == 0:
                lines += [received(cid, t, trust, answered_by="EEAST")]
            elif i < n_red:
                lines += [received(cid, t, trust),
                          triaged(cid, t + 0.05, "C3", "redirect", redirect_to="NHS111")]
            elif i < n_red + n_ht:
                lines += [received(cid, t, trust), triaged(cid, t + 0.05, None, "hear_and_treat")]
            else:
                lines += [received(cid, t, trust), triaged(cid, t + 0.05, "C3"),
                          arrived(cid, t + 0.1)]
    return sorted(lines, key=lambda line: orjson.loads(line)["ts"])


REDIRECTS = {"redirect_share": {"metric": "redirect_share", "warning": "5%", "critical": "10%",
                                "window": "15m", "for": "0m", "resolve_for": "0m",
                                "scope": ["trusts"], "min_sample": 50}}


def test_redirect_share_warning_then_critical_inhibits_then_resolves():
    log = share_log([(0.03, 0.2), (0.07, 0.2), (0.12, 0.2), (0.07, 0.2), (0.03, 0.2), (0.03, 0.2)])
    alerts = replay(log, only(REDIRECTS))
    assert changes(alerts) == [("08:30", "firing", "LAS", "warning"),
                               ("08:45", "firing", "LAS", "critical"),
                               ("09:00", "resolved", "LAS", "critical"),
                               ("09:15", "resolved", "LAS", "warning")]
    assert alerts[1]["value"] == 0.12 and alerts[1]["threshold"] == 0.1
    assert alerts[1]["summary"] == ("12% of calls redirected to other services over the last "
                                    "15 min in LAS, above the 10% critical level "
                                    "(12 of 100 calls).")
    warn, crit = alerts[0]["fingerprint"], alerts[1]["fingerprint"]
    assert warn != crit


def test_critical_inhibits_a_warning_that_never_gets_notified():
    log = share_log([(0.03, 0.2), (0.12, 0.2), (0.12, 0.2), (0.03, 0.2), (0.03, 0.2)])
    alerts = replay(log, only(REDIRECTS))
    # the warning breached too, but only the critical is heard of
    assert changes(alerts) == [("08:30", "firing", "LAS", "critical"),
                               ("09:00", "resolved", "LAS", "critical")]


def test_warning_is_notified_when_its_critical_resolves_first():
    log = share_log([(0.03, 0.2), (0.12, 0.2), (0.07, 0.2), (0.07, 0.2), (0.03, 0.2)])
    alerts = replay(log, only(REDIRECTS))
    assert changes(alerts) == [("08:30", "firing", "LAS", "critical"),
                               ("08:45", "resolved", "LAS", "critical"),
                               ("08:45", "firing", "LAS", "warning"),
                               ("09:15", "resolved", "LAS", "warning")]
    assert alerts[2]["starts_at"] == format_ts(at(30))   # it has been firing since 08:30


def test_c1_redirect_count_and_hear_and_treat_band():
    lines = share_log([(0.0, 0.2)] * 2 + [(0.0, 0.02)] * 2 + [(0.0, 0.2)] * 2)
    lines += [received("c1r", 20), triaged("c1r", 20.5, "C1", "redirect", redirect_to="EEAST")]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    doc = only({
        "c1_redirected": {"metric": "c1_redirected", "warning": 0, "window": "15m",
                          "for": "0m", "resolve_for": "0m", "scope": ["trusts"], "min_sample": 0},
        "hear_and_treat_share": {"metric": "hear_and_treat_share", "band": ["5%", "40%"],
                                 "window": "15m", "for": "0m", "resolve_for": "0m",
                                 "scope": ["trusts"], "min_sample": 50},
    })
    alerts = replay(lines, doc)
    got = [(a["at"][11:16], a["rule"], a["status"]) for a in alerts]
    assert got == [("08:30", "c1_redirected", "firing"),
                   ("08:45", "c1_redirected", "resolved"),
                   ("08:45", "hear_and_treat_share", "firing"),
                   ("09:15", "hear_and_treat_share", "resolved")]
    assert alerts[0]["summary"].startswith("1 C1 call redirected to other services over the "
                                           "last 15 min in LAS")
    assert "below the 5%-40% band" in alerts[2]["summary"] and alerts[2]["threshold"] == 0.05


# --------------------------------------------------------------------------------------------
# Pressure and data gaps
# --------------------------------------------------------------------------------------------

def background(minutes: int, trust: str = "EEAST") -> list[bytes]:
    """One hear-and-treat call a minute: keeps the watermark moving, never waits."""
    out = []
    for m in range(minutes):
        out += [received(f"bg{trust}{m}", m, trust), triaged(f"bg{trust}{m}", m + 0.1, None,
                                                             "hear_and_treat")]
    return out


def test_calls_waiting_and_longest_wait_fire_before_the_means_move():
    lines = background(240)
    # 12 C1 calls at 08:10 wait for crews until 08:40; one C2 call waits from 08:00 to 09:30
    for i in range(12):
        lines += [received(f"w{i}", 10), triaged(f"w{i}", 10, "C1"), arrived(f"w{i}", 40)]
    lines += [received("long", 0), triaged("long", 0, "C2"), arrived("long", 90)]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    doc = only({
        "c1_waiting": {"metric": "calls_waiting", "category": "C1", "warning": 10},
        "c2_longest_wait": {"metric": "longest_wait", "category": "C2", "warning": "40m"},
    })
    alerts = replay(lines, doc)
    got = [(a["at"][11:16], a["rule"], a["status"]) for a in alerts]
    # waiting from the 08:11 boundary (12 > 10), pending 5 min (default `for`) -> 08:16;
    # crews at 08:40 -> clear at the 08:41 boundary, resolve_for 10 min -> 08:51.
    # The C2 wait passes 40 min after 08:40 (first breach at the 08:41 boundary), fires 08:46;
    # the crew arrives at 09:30 -> clear at 09:31, resolved 09:41.
    assert got == [("08:16", "c1_waiting", "firing"), ("08:46", "c2_longest_wait", "firing"),
                   ("08:51", "c1_waiting", "resolved"), ("09:41", "c2_longest_wait", "resolved")]
    assert alerts[0]["summary"] == ("12 C1 calls waiting for a crew in LAS, above the warning "
                                    "level of 10 (longest wait 6 min).")
    assert alerts[1]["summary"] == ("Longest C2 wait for a crew 46 min in LAS, past the 40 min "
                                    "warning limit (1 C2 call waiting).")


def test_data_gap_fires_when_a_trust_goes_silent_and_resolves_when_it_returns():
    lines = background(240, "LAS")
    for m in list(range(0, 60)) + list(range(120, 240)):
        lines += [received(f"ee{m}", m, "EEAST"), triaged(f"ee{m}", m + 0.1, None, "hear_and_treat")]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    doc = only({"data_gap": {"metric": "data_gap", "warning": "30m"}})
    alerts = replay(lines, doc)
    # EEAST's last call 08:59; LAS calls keep coming: the gap passes 30 min at 09:30's call,
    # seen at the 09:31 boundary; EEAST is back at 10:00 -> resolved at the 10:01 boundary
    assert changes(alerts) == [("09:31", "firing", "EEAST", "warning"),
                               ("10:01", "resolved", "EEAST", "warning")]
    assert alerts[0]["summary"].startswith("No calls received from EEAST for 31 min while other "
                                           "trusts' calls kept arriving (last at 08:59 GMT")


def test_data_gap_scales_with_a_small_trusts_usual_gap():
    lines = background(26 * 60, "LAS")
    # a small trust: one call every 20 minutes, then a 70-minute pause on the second day
    times = [m for m in range(0, 26 * 60, 20) if not 25 * 60 < m < 25 * 60 + 70]
    for m in times:
        lines += [received(f"s{m}", m, "IOW"), triaged(f"s{m}", m + 0.1, None, "hear_and_treat")]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    fixed = replay(lines, only({"data_gap": {"metric": "data_gap", "warning": "30m",
                                             "usual_gaps": 0}}))
    assert {a["labels"]["trust"] for a in fixed} == {"IOW"}
    adaptive = replay(lines, only({"data_gap": {"metric": "data_gap", "warning": "30m",
                                                "usual_gaps": 5}}))
    # 5 x its usual 20-minute gap is 100 minutes: a 70-minute pause is not a broken feed
    assert adaptive == []


# --------------------------------------------------------------------------------------------
# Lifecycle details
# --------------------------------------------------------------------------------------------

def test_repeat_interval_renotifies_while_firing():
    log = response_log([(0, 300, 25)])
    doc = only({"c2_mean": {**C2_MEAN["c2_mean"], "repeat_interval": "1h",
                            "scope": ["trusts"]}})
    alerts = replay(log, doc)
    assert [(a["at"][11:16], a["repeat"]) for a in alerts] == [
        ("08:45", 0), ("09:45", 1), ("10:45", 2), ("11:45", 3), ("12:45", 4)]
    assert len({a["fingerprint"] for a in alerts}) == 1


def test_fingerprints_are_stable_and_distinct():
    labels = {"alertname": "c2_mean", "trust": "LAS", "category": "C2", "severity": "warning",
              "window": "1h"}
    expected = hashlib.sha256(orjson.dumps(dict(sorted(labels.items())))).hexdigest()[:16]
    assert fingerprint(labels) == expected == fingerprint(dict(reversed(list(labels.items()))))
    log = response_log([(0, 120, 25)])
    first = replay(log, only(C2_MEAN))
    again = replay(log, only(C2_MEAN))
    assert [a["fingerprint"] for a in first] == [a["fingerprint"] for a in again]
    assert first[0]["fingerprint"] != first[1]["fingerprint"]     # "*" and LAS differ


def _restored(ev, doc):
    """A restart: the lifecycle restored from `snapshot()` into a new evaluator."""
    fresh = build_evaluator(doc, SETTINGS)
    fresh.restore(ev.snapshot())
    return fresh


def _pickled(ev, doc):
    """The live merge's snapshot: the whole evaluator through pickle."""
    import pickle
    return pickle.loads(pickle.dumps(ev))


@pytest.mark.parametrize("carry", [_restored, _pickled], ids=["restored", "pickled"])
def test_carried_evaluator_continues_exactly(carry):
    """Carried over mid-alert (firing, its wording cached), the evaluator raises exactly what
    an uninterrupted one does: nothing twice, nothing lost."""
    log = response_log([(0, 120, 25), (120, 300, 10)])
    doc = only(C2_MEAN)
    reference = replay(log, doc)

    class Restarting:
        def __init__(self):
            self.inner = build_evaluator(doc, SETTINGS)

        def evaluate(self, end, records, pressure, last_call, emit):
            if end == at(60):     # "crash" with the alert firing
                self.inner = carry(self.inner, doc)
            self.inner.evaluate(end, records, pressure, last_call, emit)

    _, out = process_lines(log, SETTINGS, Restarting())
    assert out.alert_records == reference
    assert [a["status"] for a in reference] == ["firing", "firing", "resolved", "resolved"]


def test_firing_lists_active_alerts():
    log = response_log([(0, 120, 25)])
    ev = build_evaluator(only(C2_MEAN), SETTINGS)
    process_lines(log, SETTINGS, ev)
    active = ev.firing()
    assert sorted(a["labels"]["trust"] for a in active) == ["*", "LAS"]
    assert all(a["status"] == "firing" for a in active)


def test_offline_replay_writes_alerts_in_event_time_order(tmp_path):
    log = response_log([(0, 120, 25), (120, 300, 10)]) + share_log(
        [(0.03, 0.2), (0.12, 0.2), (0.03, 0.2)] * 3, trust="EEAST")
    log.sort(key=lambda line: orjson.loads(line)["ts"])
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join(log) + b"\n")
    doc = only({**C2_MEAN, **REDIRECTS})
    summary = run_offline([str(path)], tmp_path / "out", SETTINGS, build_evaluator(doc, SETTINGS),
                          progress=False)
    rows = [orjson.loads(line) for line in (tmp_path / "out" / "alerts.jsonl").read_bytes().splitlines()]
    assert len(rows) == summary["alerts"] > 4
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
    assert {r["rule"] for r in rows} == {"c2_mean", "redirect_share"}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

def test_shipped_defaults_encode_the_national_standards():
    rules = {r.name: r for r in load_rules({}, SETTINGS)}
    expect = {"c1_mean": 420, "c1_p90": 900, "c2_mean": 1080, "c2_p90": 2400, "c3_p90": 7200,
              "c4_p90": 10800}
    for name, seconds in expect.items():
        rule = rules[name]
        assert [lv.high for lv in rule.levels] == [seconds], name
        assert rule.window == "1h" and rule.min_sample == 20
        assert rule.scope == ("trusts", "all")
    assert "c2_mean_interim" not in rules
    on = {r.name: r for r in load_rules(
        {"alerts": {"rules": {"c2_mean_interim": {"enabled": True}}}}, SETTINGS)}
    assert on["c2_mean_interim"].levels[0].high == 1800
    share = rules["redirect_share"]
    assert [(lv.severity, lv.high) for lv in share.levels] == [("critical", 0.10), ("warning", 0.05)]


def test_user_config_overrides_merge_over_shipped_rules():
    doc = {"alerts": {"defaults": {"min_sample": 30},
                      "rules": {"c1_waiting": {"warning": 6, "critical": 12},
                                "las_c2": {"metric": "calls_waiting", "category": "C2",
                                           "warning": 150, "trusts": ["LAS"]}}}}
    rules = {r.name: r for r in load_rules(doc, SETTINGS)}
    assert [lv.high for lv in rules["c1_waiting"].levels] == [12, 6]
    assert rules["c2_mean"].min_sample == 30
    assert rules["las_c2"].trusts == frozenset({"LAS"})


@pytest.mark.parametrize("rule, message", [
    ({"metric": "respose_mean", "category": "C2", "warning": "18m"},
     "[alerts.rules.x].metric: unknown metric 'respose_mean'"),
    ({"metric": "response_mean", "category": "C2", "warning": "18 minutes"},
     "[alerts.rules.x].warning: bad duration '18 minutes'"),
    ({"metric": "response_mean", "category": "C2", "warning": 0.05},
     "[alerts.rules.x].warning: this metric needs a duration such as \"18m\", got 0.05"),
    ({"metric": "redirect_share", "warning": "5m"},
     "[alerts.rules.x].warning: this metric needs a share such as 0.05 or \"5%\", got '5m'"),
    ({"metric": "redirect_share", "warning": 5},
     "[alerts.rules.x].warning: a share must be between 0 and 1"),
    ({"metric": "calls_waiting", "category": "C1", "warning": "10m"},
     "[alerts.rules.x].warning: this metric needs a whole number of calls"),
    ({"metric": "response_mean", "warning": "18m"},
     "[alerts.rules.x]: response_mean needs a category"),
    ({"metric": "response_mean", "category": "C9", "warning": "18m"},
     "[alerts.rules.x].category: 'C9' is not one of"),
    ({"metric": "response_mean", "category": "C2", "warning": "18m", "window": "2h"},
     "[alerts.rules.x].window: no window named '2h' is computed"),
    ({"metric": "response_mean", "category": "C2"},
     "[alerts.rules.x]: needs a level"),
    ({"metric": "redirect_share", "warning": "10%", "critical": "5%"},
     "[alerts.rules.x]: the critical level must be above the warning level"),
    ({"metric": "response_mean", "category": "C2", "warning": "18m", "for": "soon"},
     "[alerts.rules.x].for: bad duration 'soon'"),
    ({"metric": "response_mean", "category": "C2", "warning": "18m", "treshold": 3},
     "[alerts.rules.x]: unknown key 'treshold'"),
    ({"metric": "hear_and_treat_share", "band": ["40%", "5%"]},
     "[alerts.rules.x].band: low must be below high"),
    ({"metric": "calls_waiting", "category": "C1", "warning": 10, "every": "90s"},
     "[alerts.rules.x].every must be a whole number of 1m buckets"),
])
def test_invalid_rules_give_one_clear_message(rule, message):
    with pytest.raises(ConfigError) as err:
        load_rules(only({"x": rule}), SETTINGS)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_file_is_one_line_and_exit_2(tmp_path):
    cfg = tmp_path / "rules.toml"
    cfg.write_text('[alerts.rules.c2_mean]\nwarning = 0.3\n')
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(response_log([(0, 30, 10)])) + b"\n")
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--offline", str(log),
                           "--out", str(tmp_path / "out"), "--config", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "callstream: error: [alerts.rules.c2_mean].warning: this metric needs a duration such "
        "as \"18m\", got 0.3"]
    cfg.write_text('[alert]\n')
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--offline", str(log),
                           "--out", str(tmp_path / "out"), "--config", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown section [alert]" in proc.stderr


def test_say_duration():
    assert [say_duration(s) for s in (45, 60, 2052, 1080, 7500, 7200)] == [
        "45 s", "1 min", "34 min 12 s", "18 min", "2 h 5 min", "2 h"]


def test_evaluator_without_rules_emits_nothing():
    log = response_log([(0, 120, 25)])
    assert replay(log, only({})) == []
    assert isinstance(build_evaluator(only({}), SETTINGS), AlertEvaluator)


def test_shortcuts_match_the_exhaustive_evaluation():
    """The evaluator skips trusts that cannot change state; on a generated multi-trust log with
    every shipped rule it must raise exactly what evaluating everything every time raises."""
    from producers.simulate import TrustProfile, generate
    from streams.rules import load_rules
    from streams.timefmt import parse_ts
    trusts = [TrustProfile("LAS", 5000), TrustProfile("EEAST", 2500, hear_and_treat=0.3,
                                                      redirect_at_receipt=0.06),
              TrustProfile("IOW", 120)]
    lines = list(generate(trusts, parse_ts("2026-01-14T00:00:00Z"), 1.5, seed=3))
    doc = {"alerts": {"rules": {"c2_mean_interim": {"enabled": True},
                                "data_gap": {"scope": ["trusts", "all"]}}}}
    rules = load_rules(doc, SETTINGS)
    fast = process_lines(lines, SETTINGS, AlertEvaluator(rules, SETTINGS))[1].alert_records
    plain = process_lines(lines, SETTINGS, AlertEvaluator(rules, SETTINGS, exhaustive=True)
                          )[1].alert_records
    assert len(fast) > 50
    assert {a["rule"] for a in fast} >= {"c2_mean", "c1_longest_wait", "redirect_share"}
    assert [(a["at"], a["fingerprint"], a["status"], a["repeat"]) for a in fast] == \
        [(a["at"], a["fingerprint"], a["status"], a["repeat"]) for a in plain]
    assert [a["summary"] for a in fast] == [a["summary"] for a in plain]


def test_winter_surge_raises_the_expected_alerts_and_nothing_else():
    """A trust meeting the C2 standard at first; over the day C2 responses degrade and mutual-aid
    redirects climb past 10 %. Expected: the C2 mean alert, the redirect warning and then the
    redirect critical, each once, none resolved, each at the second consecutive breaching
    window (the 15-minute `for`) of the hour records the processor published."""
    from producers.simulate import DEFAULT_RESPONSE, TrustProfile, generate
    from streams.timefmt import parse_ts
    good = dict(DEFAULT_RESPONSE, C2=(840.0, 1700.0))           # C2 mean 14 min, 90th ~28 min
    trust = TrustProfile("LAS", 6000, mean_p90_s=good, redirect_at_receipt=0.0025,
                         redirect_by_triage=0.0025)
    lines = list(generate([trust], parse_ts("2026-01-14T00:00:00Z"), 1.0, seed=11,
                          scenario="winter-surge"))
    doc = only({"c2_mean": {"metric": "response_mean", "category": "C2", "warning": "18m",
                            "scope": ["trusts"]},
                "redirect_share": {"metric": "redirect_share", "warning": "5%",
                                   "critical": "10%", "scope": ["trusts"]}})
    summary, out = process_lines(lines, SETTINGS, build_evaluator(doc, SETTINGS))
    got = [(a["rule"], a["labels"]["severity"], a["status"]) for a in out.alert_records]
    assert sorted(got) == [("c2_mean", "warning", "firing"),
                           ("redirect_share", "critical", "firing"),
                           ("redirect_share", "warning", "firing")]
    order = [(r, s) for r, s, _ in got]
    assert order.index(("redirect_share", "warning")) < order.index(("redirect_share", "critical"))

    hour = [r for r in out.stats_records if r["window"] == "1h" and r["trust"] == "LAS"]
    c2 = {r["end"]: r for r in hour if r["category"] == "C2"}
    calls = {r["end"]: r for r in hour if r["category"] == "ALL"}

    def second_breach(values: dict, threshold: float) -> str:
        ends = sorted(values)
        for prev, cur in zip(ends, ends[1:]):
            if values[prev] > threshold and values[cur] > threshold:
                return cur
        raise AssertionError("never breached twice in a row")

    mean = {e: r["mean_s"] for e, r in c2.items() if r["count"] >= 20}
    share = {e: r["redirected"] / r["calls"] for e, r in calls.items() if r["calls"] >= 20}
    at_of = {(a["rule"], a["labels"]["severity"]): a["at"] for a in out.alert_records}
    assert at_of[("c2_mean", "warning")] == second_breach(mean, 1080.0)
    assert at_of[("redirect_share", "warning")] == second_breach(share, 0.05)
    assert at_of[("redirect_share", "critical")] == second_breach(share, 0.10)


# --------------------------------------------------------------------------------------------
# The batch form (what the columnar replay calls) against evaluating every boundary
# --------------------------------------------------------------------------------------------

BATCH_RULES = only({
    "waiting": {"metric": "calls_waiting", "category": "C2", "warning": 2, "critical": 4,
                "for": "3m", "resolve_for": "4m", "scope": ["trusts", "all"]},
    "longest": {"metric": "longest_wait", "category": "C1", "warning": "5m", "critical": "10m",
                "for": "2m", "resolve_for": "3m", "repeat_interval": "9m"},
    "slow": {"metric": "longest_wait", "category": "C3", "warning": "4m", "every": "5m",
             "for": "0s", "resolve_for": "0s", "scope": ["all"]},
    "mean": {"metric": "response_mean", "category": "C2", "warning": "10m", "critical": "20m",
             "min_sample": 2, "for": "15m", "resolve_for": "30m"},
    "p90": {"metric": "response_p90", "category": "C1T", "warning": "8m", "for": "0s",
            "resolve_for": "15m", "trusts": ["LAS", "IOW"], "min_sample": 1},
    "share": {"metric": "redirect_share", "warning": "20%", "critical": "40%", "min_sample": 3},
    "c1": {"metric": "c1_redirected", "warning": 0, "min_sample": 4},
    "band": {"metric": "hear_and_treat_share", "band": ["20%", "60%"], "min_sample": 2,
             "repeat_interval": "1h"},
    "gap": {"metric": "data_gap", "warning": "6m", "usual_gaps": 3, "scope": ["trusts", "all"]},
})


def random_boundaries(seed: int, m: int, n_trusts: int):
    """A run of minute boundaries with values hovering around BATCH_RULES' levels: calls
    waiting and longest waits (random walks with crews arriving), each trust's calls (with
    silences), and hour and 24-hour window records every 15 minutes and every hour."""
    from streams.rules import BoundaryBatch, ClosedWindows
    rng = np.random.default_rng(seed)
    trusts = ("EEAST", "IOW", "LAS")[:n_trusts]
    start = at(0) - at(0) % 86_400_000
    ends = start + 60_000 * np.arange(1, m + 1, dtype=np.int64)
    waiting = np.zeros((4, n_trusts + 1, m), np.int64)
    longest = np.zeros((4, n_trusts + 1, m), np.int64)
    for c in range(4):
        for t in range(n_trusts):
            n, oldest = 0, 0
            for x in range(m):
                n = max(0, n + int(rng.integers(-2, 3)) if rng.random() < 0.6 else n)
                if n and (not oldest or rng.random() < 0.15):
                    oldest = int(ends[x] - rng.integers(0, 14 * 60_000))   # a crew arrived
                oldest = oldest if n else 0
                waiting[c, t, x] = n
                longest[c, t, x] = max(0, int(ends[x]) - oldest) if n else 0
        waiting[c, n_trusts] = waiting[c, :n_trusts].sum(axis=0)
        longest[c, n_trusts] = longest[c, :n_trusts].max(axis=0, initial=0)
    last = np.full((m, n_trusts), -1, np.int64)
    for t in range(n_trusts):
        rate, latest = rng.choice([0.9, 0.4, 0.1]), -1
        quiet = set(range(*sorted(rng.integers(0, m, 2)))) if rng.random() < 0.7 else set()
        for x in range(m):
            if x not in quiet and rng.random() < rate:
                latest = int(ends[x] - rng.integers(1, 60_000))
            last[x, t] = latest
    windows = {}
    for name, every in (("1h", 15), ("24h", 60)):
        at_ = np.array([x for x in range(m) if int(ends[x]) % (every * 60_000) == 0], np.int64)
        k = len(at_)
        count = rng.integers(0, 6, (k, n_trusts + 1, 5))
        mean = np.where(count > 0, np.round(rng.uniform(300, 1500, count.shape), 3), np.nan)
        p90 = np.where(count > 0, np.round(rng.uniform(200, 700, count.shape), 3), np.nan)
        calls = rng.integers(0, 12, (k, n_trusts + 1))
        ht = rng.integers(0, calls + 1)
        red = rng.integers(0, calls + 1)
        red_c1 = rng.integers(0, red + 1) * (rng.random(calls.shape) < 0.3)
        totals = np.stack((calls, ht, red, red_c1), axis=-1)
        has = (calls > 0) | (rng.random(calls.shape) < 0.2)
        windows[name] = ClosedWindows(at_, (None,) * k, count, mean, p90, totals, has)
    return BoundaryBatch(ends, trusts, waiting, longest, last, windows)


def boundary_arguments(batch, x: int):
    """What the reference processor passes `evaluate` at boundary x of a BoundaryBatch."""
    from streams.rules import WAIT_CATEGORIES
    from streams.windows import CATEGORY_KEYS
    trusts = batch.trusts + ("*",)
    records = []
    for name, w in batch.windows.items():
        for i in np.flatnonzero(w.at == x).tolist():
            for t, trust in enumerate(trusts):
                for c, cat in enumerate(CATEGORY_KEYS):
                    if w.count[i, t, c]:
                        records.append({"window": name, "trust": trust, "category": cat,
                                        "count": int(w.count[i, t, c]),
                                        "mean_s": float(w.mean_s[i, t, c]),
                                        "p90_s": float(w.p90_s[i, t, c])})
                if w.has_totals[i, t]:
                    calls, ht, red, red_c1 = (int(v) for v in w.totals[i, t])
                    records.append({"window": name, "trust": trust, "category": "ALL",
                                    "calls": calls, "hear_and_treat": ht, "redirected": red,
                                    "redirected_c1": red_c1})
    pressure = {(trust, cat): (int(batch.waiting[c, t, x]), int(batch.longest_ms[c, t, x]))
                for t, trust in enumerate(batch.trusts) for c, cat in enumerate(WAIT_CATEGORIES)
                if batch.waiting[c, t, x]}
    last_call = {trust: int(batch.last_call[x, t]) for t, trust in enumerate(batch.trusts)
                 if batch.last_call[x, t] >= 0}
    return records, (lambda: pressure), last_call


def batch_slice(batch, a: int, b: int):
    from streams.rules import BoundaryBatch, ClosedWindows
    windows = {}
    for name, w in batch.windows.items():
        sel = (w.at >= a) & (w.at < b)
        windows[name] = ClosedWindows(w.at[sel] - a, tuple(np.array(w.dates, object)[sel]),
                                      w.count[sel], w.mean_s[sel], w.p90_s[sel],
                                      w.totals[sel], w.has_totals[sel])
    return BoundaryBatch(batch.ends[a:b], batch.trusts, batch.waiting[:, :, a:b],
                         batch.longest_ms[:, :, a:b], batch.last_call[a:b], windows)


@hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 400), n_trusts=st.integers(0, 3),
       cuts=st.lists(st.integers(1, 399), max_size=4))
def test_batch_evaluation_matches_evaluating_every_boundary(seed, m, n_trusts, cuts):
    """`evaluate_batch` (which skips every evaluation its watches allow, across any split into
    batches) raises exactly what the plain state machine raises when every observation of
    every boundary goes through it (`exhaustive`), and what `evaluate` raises."""
    batch = random_boundaries(seed, m, n_trusts)
    rules = load_rules(BATCH_RULES, SETTINGS)
    plain = AlertEvaluator(rules, SETTINGS, exhaustive=True)
    hook = AlertEvaluator(rules, SETTINGS)
    expected, by_hook = [], []
    for x in range(m):
        end = int(batch.ends[x])
        plain.evaluate(end, *boundary_arguments(batch, x), expected.append)
        hook.evaluate(end, *boundary_arguments(batch, x), by_hook.append)
    fast = AlertEvaluator(rules, SETTINGS)
    got = []
    bounds = [0] + sorted({c for c in cuts if c < m}) + [m]
    for a, b in zip(bounds, bounds[1:]):
        fast.evaluate_batch(batch_slice(batch, a, b), got.append)
    assert by_hook == expected
    assert got == expected
    event(f"alerts: {min(len(expected) // 10 * 10, 50)}+")
    assert fast.states.keys() == plain.states.keys()


def test_alert_times_are_written_as_format_ts_writes_them():
    from streams.rules import _ts_text
    from streams.timefmt import MAX_TS_MS, MIN_TS_MS
    rng = np.random.default_rng(5)
    times = rng.integers(MIN_TS_MS, MAX_TS_MS, 20_000).tolist()
    times += [t - t % 60_000 for t in times[:5_000]] + [MIN_TS_MS, MAX_TS_MS - 1, 0, 999]
    assert [_ts_text(t) for t in times] == [format_ts(t) for t in times]


# --------------------------------------------------------------------------------------------
# Pieces of the batch form against plain references
# --------------------------------------------------------------------------------------------

def plain_summary(ev: AlertEvaluator, rule, st, status: str) -> str:
    """The summary sentence written out in full each time (the wording `summary` caches in
    pieces per alert, status and level)."""
    from datetime import datetime

    from streams.rules import Metric
    say_share = lambda v: f"{v * 100:.0f}%" if abs(v * 100 - round(v * 100)) < 1e-9 \
        else f"{v * 100:.1f}%"                                              # noqa: E731
    plural = lambda n, w: f"{n} {w}" if n == 1 else f"{n} {w}s"             # noqa: E731
    trust, severity = st.labels["trust"], st.labels["severity"]
    where = "across all trusts" if trust == "*" else f"in {trust}"
    cat, v, thr, obs, firing = rule.category, st.value, st.threshold, st.obs, status == "firing"
    if rule.window == "day":
        win = f"on {obs.record.get('date') if obs.record else 'the day'}"
    else:
        win = {"1h": "over the last hour", "24h": "over the last 24 hours"}.get(rule.window)
    m = rule.metric
    if m in (Metric.RESPONSE_MEAN, Metric.RESPONSE_P90):
        what = "mean response" if m is Metric.RESPONSE_MEAN else "90th-centile response"
        noun = "target" if severity == "warning" else "critical level"
        cmp = f"{'above' if firing else 'back within'} the {say_duration(thr)} {noun}"
        text = f"{cat} {what} {say_duration(v)} {win} {where}, {cmp} ({plural(obs.sample, 'response')})"
    elif m is Metric.REDIRECT_SHARE:
        cmp = f"{'above' if firing else 'back under'} the {say_share(thr)} {severity} level"
        text = (f"{say_share(v)} of calls redirected to other services {win} {where}, {cmp} "
                f"({obs.detail[0] if obs.detail else 0} of {plural(obs.sample, 'call')})")
    elif m is Metric.HEAR_AND_TREAT_SHARE:
        level = next(lv for lv in rule.levels if lv.severity == severity)
        band = f"{say_share(level.low)}-{say_share(level.high)}"
        cmp = (f"{'below' if thr == level.low else 'above'} the {band} band" if firing
               else f"back within the {band} band")
        text = (f"Hear-and-treat {say_share(v)} of calls {win} {where}, {cmp} "
                f"({obs.detail[0] if obs.detail else 0} of {plural(obs.sample, 'call')})")
    elif m is Metric.C1_REDIRECTED:
        limit = "any is flagged" if thr == 0 else f"{severity} above {int(thr)}"
        text = (f"{plural(int(v), 'C1 call')} redirected to other services {win} {where} ({limit})"
                if firing else f"C1 calls redirected to other services {win} {where} down to "
                f"{int(v)} ({limit})")
    elif m is Metric.CALLS_WAITING:
        cmp = f"{'above' if firing else 'back under'} the {severity} level of {int(thr)}"
        longest = obs.detail[0] / 1000.0 if obs.detail else 0.0
        text = (f"{plural(int(v), cat + ' call')} waiting for a crew {where}, {cmp} "
                f"(longest wait {say_duration(longest)})")
    elif m is Metric.LONGEST_WAIT:
        cmp = f"{'past' if firing else 'back under'} the {say_duration(thr)} {severity} limit"
        text = (f"Longest {cat} wait for a crew {say_duration(v)} {where}, {cmp} "
                f"({plural(obs.detail[0] if obs.detail else 0, cat + ' call')} waiting)")
    else:
        last = obs.detail[0] if obs.detail else None
        when = (datetime.fromtimestamp(last / 1000.0, ev.tz).strftime("%H:%M %Z, %d %b")
                if last is not None else "never")
        source = "any trust" if trust == "*" else trust
        others = "" if trust == "*" else " while other trusts' calls kept arriving"
        text = (f"No calls received from {source} for {say_duration(v)}{others} (last at "
                f"{when}); check the feed" if firing else
                f"Calls from {source} are arriving again (last at {when})")
    return text[0].upper() + text[1:] + "."


def test_summaries_match_the_plain_wording():
    """`summary` builds each sentence from words cached per alert, status and level; on
    random values of every metric, trust, severity and status it says what the plain
    wording says (and what it said before, for the same alert)."""
    from streams.rules import AlertState, Observation
    doc = {"alerts": {"rules": {**BATCH_RULES["alerts"]["rules"],
                                "day": {"metric": "response_mean", "category": "C1",
                                        "warning": "7m", "window": "day"},
                                "c1w": {"metric": "calls_waiting", "category": "C1",
                                        "warning": 3}},
                      "include_defaults": True}}
    rules = load_rules(doc, SETTINGS)
    ev = AlertEvaluator(rules, SETTINGS)
    rng = np.random.default_rng(8)
    checked = 0
    for rule in rules:
        for trust in ("LAS", "*"):
            for level in rule.levels:
                labels = ev._labels(rule, trust, level.severity)
                for _ in range(40):
                    thr = level.high if level.low is None or rng.random() < 0.5 else level.low
                    v = float(rng.choice([rng.uniform(0, 2) * (thr or 1), rng.integers(0, 40)]))
                    n = int(rng.integers(0, 500))
                    detail = () if rng.random() < 0.1 else (int(rng.integers(0, 10**7)),)
                    rec = {"date": f"2026-01-{rng.integers(1, 29):02d}"} \
                        if rng.random() < 0.7 else None
                    st = AlertState(fingerprint(labels), labels, "firing", 0, threshold=thr,
                                    value=v, obs=Observation(v, n, detail, rec))
                    for status in ("firing", "resolved"):
                        assert ev.summary(rule, st, status) == plain_summary(ev, rule, st, status)
                        checked += 1
    assert checked > 1000


def plain_next_stops(values, scale, times, watch, pos, todo):
    """`next_stops` written as a plain scan, key by key: (stop, broke, began, the time a run
    still under way at the stop began) per key."""
    out = {}
    n_levels = (watch.shape[1] - 3) // 4
    for k in todo:
        low, high, until = watch[k, :3]
        runs = [list(watch[k, 3 + 4 * lv: 7 + 4 * lv]) for lv in range(n_levels)]
        since = [r[3] if r[3] != -np.inf else None for r in runs]
        at_start = [s is not None for s in since]
        broke, began = [-1] * n_levels, [-1] * n_levels
        x = pos[k] + 1
        while x < values.shape[1]:
            v = values[k, x]
            if not np.isnan(v):
                s = scale[k, x] if scale.shape[0] else 1.0
                t = times[x]
                if not low * s < v <= high * s or t >= until:
                    break
                inside = [(v > lvl * s if d > 0 else v <= lvl * s) if d else False
                          for d, lvl, _, _ in runs]
                if any(inside[lv] and (since[lv] is None and runs[lv][2] <= 0 or
                                       since[lv] is not None and t - since[lv] >= runs[lv][2])
                       for lv in range(n_levels)):
                    break
                for lv in range(n_levels):
                    if inside[lv] and since[lv] is None:
                        since[lv], at_start[lv], began[lv] = t, False, x
                    elif not inside[lv] and since[lv] is not None and runs[lv][0]:
                        if at_start[lv]:
                            broke[lv], at_start[lv] = x, False
                        since[lv], began[lv] = None, -1
            x += 1
        # at a stop, a run begun since and still under way there is a step within x's pass,
        # at the time it began
        within = [None] * n_levels
        if x < values.shape[1]:
            v, s = values[k, x], (scale[k, x] if scale.shape[0] else 1.0)
            for lv, (d, lvl, _, _) in enumerate(runs):
                if began[lv] >= 0 and (v > lvl * s if d > 0 else v <= lvl * s):
                    within[lv], began[lv] = times[began[lv]], -1
        out[k] = (x, broke, began, within)
    return out


@hsettings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), n_levels=st.integers(1, 2), scaled=st.booleans())
def test_next_stops_matches_a_plain_scan(seed, n_levels, scaled):
    from streams.fast.alerts import (MARK_HEAD, MARK_LEVEL, MARK_REPLAY, MARK_WITHIN,
                                     NO_START, next_stops)
    rng = np.random.default_rng(seed)
    n_keys, m = 5, int(rng.integers(1, 60))
    values = np.round(rng.uniform(0, 10, (n_keys, m)), 1)
    values[rng.random((n_keys, m)) < 0.2] = np.nan
    scale = rng.choice([1.0, 1.5], (n_keys, m)) if scaled else np.zeros((0, 0))
    times = np.cumsum(rng.integers(1, 4, m)) * 60_000
    watch = np.zeros((n_keys, 3 + 4 * n_levels))
    for k in range(n_keys):
        watch[k, :3] = (rng.choice([-np.inf, 1.0]), rng.choice([np.inf, 9.0]),
                        rng.choice([np.inf, float(times[-1] // 2)]))
        for lv in range(n_levels):
            d = int(rng.integers(-1, 2))
            since = float(rng.choice([-np.inf, 0.0]))
            watch[k, 3 + 4 * lv: 7 + 4 * lv] = (d, rng.uniform(2, 8),
                                                 float(rng.integers(0, 4) * 60_000),
                                                 since if d else -np.inf)
    pos = rng.integers(-1, max(m - 1, 0), n_keys).astype(np.int64)
    todo = np.arange(n_keys, dtype=np.int64)
    want = plain_next_stops(values, scale, times, watch, pos, todo)
    marks = np.empty((n_keys, MARK_HEAD + MARK_LEVEL * n_levels), np.int64)
    hit_marks = np.empty_like(marks)
    hits, tails = np.empty(n_keys, np.int64), np.empty(n_keys, np.int64)
    if seed % 2:        # the rows handed in fresh, the keys to do in the hits' own buffer
        hits[:] = todo
        kernel_watch, fresh, todo = np.full_like(watch, np.nan), watch[hits], hits
    else:
        kernel_watch, fresh = watch.copy(), np.zeros((0, 0))
    n_hits, n_tails = next_stops(values, scale, times, kernel_watch, fresh, pos.copy(), todo,
                                 marks, hits, hit_marks, tails)
    assert (kernel_watch == watch).all()
    assert (hit_marks[:n_hits] == marks[hits[:n_hits]]).all()
    for k in range(n_keys):
        x, broke, began, within = want[k]
        assert marks[k, 0] == x
        levels = marks[k, MARK_HEAD:].reshape(n_levels, MARK_LEVEL)
        assert list(levels[:, 0]) == broke and list(levels[:, 1]) == began
        assert list(levels[:, 2]) == [NO_START if t is None else t for t in within]
        todo_before = (MARK_REPLAY if max(broke + began) >= 0 else 0) \
            | (MARK_WITHIN if any(t is not None for t in within) else 0)
        assert marks[k, 1] == todo_before
    assert sorted(hits[:n_hits]) == [k for k in range(n_keys) if want[k][0] < m]
    assert sorted(tails[:n_tails]) == [k for k in range(n_keys) if want[k][0] >= m and
                                       max(want[k][1] + want[k][2]) >= 0]
