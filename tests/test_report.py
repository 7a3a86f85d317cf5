"""`callstream report`: a self-contained HTML report rendered from a real offline replay of a
generated log; the series behind the charts are checked against pandas."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil

import orjson
import pandas as pd
import pytest
from PIL import Image

from producers.simulate import TrustProfile, generate
from streams.cli import main
from streams.replay import load_settings_and_rules, run_offline
from streams.feed import parse_alert
from streams.report import (alert_spans, load_replay, series, shares_by_trust, shares_over_time,
                            tiles)
from streams.timefmt import parse_ts
from tests.test_feed import T0, alert_rec

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    lines = list(generate([TrustProfile("LAS", 4000.0), TrustProfile("EEAST", 2500.0)], T0, 1.5,
                          seed=21))
    log = d / "events.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    settings, rules = load_settings_and_rules(None, None)
    run_offline([str(log)], d / "out", settings, rules, progress=False)
    return d / "out"


def stats_frame(directory) -> pd.DataFrame:
    df = pd.read_json(directory / "stats.jsonl", lines=True, dtype=False)
    df["end_ms"] = df["end"].map(parse_ts)
    return df


def dur(s: float) -> str:
    """The report's duration format, written independently: 7m 05s, or 2h 03m past an hour."""
    minutes, seconds = divmod(int(round(s)), 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def test_report_renders_self_contained_with_charts(replay_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(replay_dir), "--out", str(out)]) == 0
    assert f"report written to {out}" in capsys.readouterr().err
    page = out.read_text()
    # self-contained: no script, no external reference, every image inline
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["'](?!data:image/png;base64,)""", page)
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    names = [name for name, _ in images]
    assert names[:4] == ["distribution per category", "daily figures", "rolling 90th centiles",
                         "shares of calls"]
    for _, b64 in images:
        raw = base64.b64decode(b64)
        assert raw.startswith(PNG)
        with Image.open(io.BytesIO(raw)) as im:
            assert im.width >= 800 and im.height >= 200
    assert len({b64 for _, b64 in images}) == len(images)

    # the headline table shows summary.json, formatted
    summary = orjson.loads((replay_dir / "summary.json").read_bytes())
    for cat in ("C1", "C1T", "C2", "C3", "C4"):
        row = re.search(rf"<tr data-category='{cat}'>(.*?)</tr>", page).group(1)
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        c = summary["categories"][cat]
        assert cells[1] == f"{c['count']:,}"
        assert cells[2] == dur(c["mean_s"]) and cells[4] == dur(c["p90_s"])
    c2 = re.search(r"<tr data-category='C2'>(.*?)</tr>", page).group(1)
    status = "breached" if summary["categories"]["C2"]["mean_s"] > 18 * 60 else None
    assert (f"class='{status}'" in c2) == (status is not None)

    alerts = [orjson.loads(line) for line in (replay_dir / "alerts.jsonl").read_bytes().splitlines()]
    if alerts:          # the rules fired: a timeline and one table row per state change
        assert "alert timeline" in names
        rows = re.findall(r"<tr><td>([^<]+)</td><td>(firing|resolved)</td>", page)
        expected = [(a["at"], a["status"]) for a in sorted(alerts, key=lambda a: parse_ts(a["at"]))
                    if a["status"] == "resolved" or not a["repeat"]]
        assert rows == expected


def test_chart_series_match_pandas(replay_dir):
    rep = load_replay(replay_dir)
    df = stats_frame(replay_dir)
    assert rep.skipped_lines == 0
    allt = df[(df.trust == "*") & (df.window == "1h")]
    for cat in ("C1", "C2", "C3", "C4"):
        want = allt[allt.category == cat].sort_values("end_ms")
        got = series(rep.stats, "1h", cat)
        assert list(got["end_ms"]) == list(want["end_ms"])
        assert list(got["count"]) == list(want["count"])
        pd.testing.assert_series_equal(pd.Series(got["p90_s"]), want["p90_s"].astype(float)
                                       .reset_index(drop=True), check_names=False)
        tiled = want[(want.end_ms % 3_600_000 == 0) & (want["count"] > 0)]
        assert [s.end_ms for s in tiles(rep.stats, "1h", cat)] == list(tiled["end_ms"])

    tot = df[(df.category == "ALL") & (df.window == "1h")]
    aligned = tot[tot.end_ms % 3_600_000 == 0].groupby("trust")[["calls", "hear_and_treat", "redirected"]].sum()
    assert shares_by_trust(rep.totals, "1h") == {
        t: (int(r.calls), int(r.hear_and_treat), int(r.redirected)) for t, r in aligned.iterrows()}
    # the aligned hours tile the log exactly once: their calls are all the calls
    summary = orjson.loads((replay_dir / "summary.json").read_bytes())
    assert shares_by_trust(rep.totals, "1h")["*"][0] == summary["calls"]
    over = tot[(tot.trust == "*") & (tot.calls > 0)].sort_values("end_ms")
    got = shares_over_time(rep.totals, "1h")
    assert list(got["hear_and_treat"]) == pytest.approx(list(over.hear_and_treat / over.calls))


def test_alert_spans_pair_firing_with_resolved():
    recs = [alert_rec("a" * 16, at_min=0), alert_rec("b" * 16, at_min=5, severity="critical"),
            alert_rec("a" * 16, at_min=30, repeat=1),
            alert_rec("a" * 16, status="resolved", at_min=45),
            alert_rec("a" * 16, at_min=90)]
    spans = alert_spans([parse_alert(r) for r in reversed(recs)])
    assert [(s.fingerprint, s.start_ms, s.end_ms, s.severity) for s in spans] == [
        ("a" * 16, T0, T0 + 45 * 60_000, "warning"),
        ("b" * 16, T0 + 5 * 60_000, None, "critical"),
        ("a" * 16, T0 + 90 * 60_000, None, "warning")]
    assert spans[0].label == "c2_mean · LAS · warning"


def test_report_with_hand_written_alerts_and_a_bad_line(replay_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(replay_dir, d)
    recs = [alert_rec("a" * 16, at_min=60, severity="critical"),
            alert_rec("a" * 16, status="resolved", at_min=150, severity="critical"),
            {**alert_rec("b" * 16, at_min=200), "summary": "<b>C2 & more</b>"}]
    (d / "alerts.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\nnot json\n")
    with open(d / "stats.jsonl", "ab") as f:
        f.write(b'{"window": "1h"}\n')
    assert main(["report", str(d)]) == 0
    page = (d / "report.html").read_text()
    assert 'alt="alert timeline"' in page
    assert re.findall(r"<tr><td>([^<]+)</td><td>(firing|resolved)</td><td>(\w+)</td>", page) == [
        ("2026-01-14T01:00:00Z", "firing", "critical"), ("2026-01-14T02:30:00Z", "resolved", "critical"),
        ("2026-01-14T03:20:00Z", "firing", "warning")]
    assert html.escape("<b>C2 & more</b>") in page and "<b>C2" not in page
    assert "2 line(s) of the replay files were not records" in page


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "summary.json is missing"),
    (lambda d: (d.mkdir(), (d / "summary.json").write_text("{}"), (d / "stats.jsonl").write_text("")),
     "not a replay summary"),
    (lambda d: (d.mkdir(), (d / "summary.json").write_text("{oops"), (d / "stats.jsonl").write_text("")),
     "is not valid JSON"),
    (lambda d: d.write_text("x"), "is not a directory"),
])
def test_bad_directories_are_one_line_errors(tmp_path, capsys, setup, message):
    d = tmp_path / "replay"
    setup(d)
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callstream: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_window_is_a_one_line_error(replay_dir, tmp_path, capsys):
    assert main(["report", str(replay_dir), "--out", str(tmp_path / "r.html"), "--window", "7m"]) == 2
    err = capsys.readouterr().err
    assert "no such rolling window (has 15m, 1h, 24h)" in err and err.count("\n") == 1
