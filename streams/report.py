"""`callstream report REPLAY_DIR [--out report.html]`: one self-contained HTML file (charts as
base64 PNG, made with matplotlib's Agg renderer) from an offline replay's output directory.

What an engineer attaches after replaying last winter: the headline figures against the ARP
standards (summary.json), how each category's response times were distributed hour by hour
and day by day against its targets, the rolling 90th centiles over time, hear-and-treat and
redirect shares, and when which alert fired (alerts.jsonl). Everything is read from the
window records (stats.jsonl): the report recomputes nothing the processor already decided.

The series behind each chart come from small pure functions, tested against pandas."""

from __future__ import annotations

import base64
import html
import importlib.util
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from streams.errors import CallstreamError
from streams.feed import (ALL_TRUSTS, TARGETS, Alert, CallTotals, CategoryStats, parse_alert,
                          parse_stats, rate, window_order)

CATS = ("C1", "C2", "C3", "C4")
COLOURS = {"within": "#2f9e5b", "close": "#d99a00", "breached": "#d64545", None: "#555"}
_CAT_COLOURS = {"C1": "#d64545", "C1T": "#e98b8b", "C2": "#e07b00", "C3": "#2b6cb0", "C4": "#6b7280"}


@dataclass
class ReplayOutputs:
    """What a replay directory holds, typed (CONTRACT §3)."""

    directory: Path
    summary: dict
    stats: list[CategoryStats] = field(default_factory=list)      # all trusts ("*") only
    totals: list[CallTotals] = field(default_factory=list)        # every trust
    alerts: list[Alert] = field(default_factory=list)
    skipped_lines: int = 0


def load_replay(directory: str | Path) -> ReplayOutputs:
    """Read summary.json, stats.jsonl and alerts.jsonl; one-line errors for a wrong directory.
    Lines that are not records are skipped and counted (the report says how many)."""
    d = Path(directory)
    if not d.exists():
        raise CallstreamError(f"replay directory {str(d)!r} does not exist")
    if not d.is_dir():
        raise CallstreamError(f"{str(d)!r} is not a directory; pass the --out DIR of "
                              "`callstream replay --offline`")
    summary_path, stats_path = d / "summary.json", d / "stats.jsonl"
    for p in (summary_path, stats_path):
        if not p.is_file():
            raise CallstreamError(f"{str(d)!r} is not a replay directory: {p.name} is missing "
                                  "(make one with `callstream replay --offline LOG --out DIR`)")
    try:
        summary = orjson.loads(summary_path.read_bytes())
    except (orjson.JSONDecodeError, OSError) as exc:
        raise CallstreamError(f"{str(summary_path)!r} is not valid JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("categories"), dict):
        raise CallstreamError(f"{str(summary_path)!r} is not a replay summary (no categories)")
    out = ReplayOutputs(d, summary)
    for rec in _jsonl(stats_path, out):
        item = parse_stats(rec)
        if item is None:
            out.skipped_lines += 1
        elif type(item) is CallTotals:
            out.totals.append(item)
        elif item.trust == ALL_TRUSTS:
            out.stats.append(item)
    alerts_path = d / "alerts.jsonl"
    if alerts_path.is_file():
        for rec in _jsonl(alerts_path, out):
            alert = parse_alert(rec)
            if alert is None:
                out.skipped_lines += 1
            else:
                out.alerts.append(alert)
    out.alerts.sort(key=lambda a: a.at_ms)
    return out


def _jsonl(path: Path, out: ReplayOutputs):
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    out.skipped_lines += 1
    except OSError as exc:
        raise CallstreamError(f"cannot read {str(path)!r}: {exc.strerror}") from None


# -- series (pure) -------------------------------------------------------------------------

def rolling_windows(stats: list[CategoryStats]) -> list[str]:
    return sorted({s.window for s in stats if window_order(s.window)[0] == 0}, key=window_order)


def pick_window(stats: list[CategoryStats], preferred: str = "1h") -> str | None:
    """The rolling window the time charts use: `preferred` if present, else the shortest."""
    names = rolling_windows(stats)
    if preferred in names:
        return preferred
    return names[0] if names else None


def window_seconds(name: str) -> int:
    return int(window_order(name)[1])


def series(stats: list[CategoryStats], window: str, category: str) -> dict[str, np.ndarray]:
    """All-trusts records of one rolling window and category, by end time: end_ms, count,
    mean_s, p90_s (NaN where the window had no responses)."""
    rows = sorted((s for s in stats if s.window == window and s.category == category),
                  key=lambda s: s.end_ms)
    nan = float("nan")
    return {"end_ms": np.array([s.end_ms for s in rows], dtype=np.int64),
            "count": np.array([s.count for s in rows], dtype=np.int64),
            "mean_s": np.array([nan if s.mean_s is None else s.mean_s for s in rows]),
            "p90_s": np.array([nan if s.p90_s is None else s.p90_s for s in rows])}


def tiles(stats: list[CategoryStats], window: str, category: str) -> list[CategoryStats]:
    """Non-overlapping windows (ends on multiples of the window length) with responses: each
    response counted once, so their spread is the distribution of that window's figures."""
    size_ms = window_seconds(window) * 1000
    return sorted((s for s in stats if s.window == window and s.category == category
                   and s.count > 0 and s.end_ms % size_ms == 0), key=lambda s: s.end_ms)


def daily(stats: list[CategoryStats], category: str) -> list[CategoryStats]:
    return sorted((s for s in stats if s.window == "day" and s.category == category and s.count),
                  key=lambda s: s.end_ms)


def shares_over_time(totals: list[CallTotals], window: str, trust: str = ALL_TRUSTS) -> dict:
    """Hear-and-treat and redirected shares of one trust's calls, window by window."""
    rows = sorted((t for t in totals if t.window == window and t.trust == trust and t.calls),
                  key=lambda t: t.end_ms)
    return {"end_ms": np.array([t.end_ms for t in rows], dtype=np.int64),
            "hear_and_treat": np.array([t.hear_and_treat / t.calls for t in rows]),
            "redirected": np.array([t.redirected / t.calls for t in rows])}


def shares_by_trust(totals: list[CallTotals], window: str) -> dict[str, tuple[int, int, int]]:
    """trust -> (calls, hear and treat, redirected) summed over non-overlapping windows."""
    size_ms = window_seconds(window) * 1000
    out: dict[str, list[int]] = {}
    for t in totals:
        if t.window == window and t.end_ms % size_ms == 0:
            acc = out.setdefault(t.trust, [0, 0, 0])
            acc[0] += t.calls
            acc[1] += t.hear_and_treat
            acc[2] += t.redirected
    return {k: tuple(v) for k, v in sorted(out.items(), key=lambda kv: (kv[0] != ALL_TRUSTS, kv[0]))}


@dataclass(frozen=True)
class AlertSpan:
    fingerprint: str
    label: str
    severity: str
    start_ms: int
    end_ms: int | None              # None: still firing when the replay ended
    summary: str


def alert_spans(alerts: list[Alert]) -> list[AlertSpan]:
    """Firing periods: from each firing change (repeats ignored) to the next resolve."""
    open_: dict[str, Alert] = {}
    spans: list[AlertSpan] = []
    for a in sorted(alerts, key=lambda a: a.at_ms):
        if a.status == "firing":
            open_.setdefault(a.fingerprint, a)
        elif a.fingerprint in open_:
            f = open_.pop(a.fingerprint)
            spans.append(AlertSpan(a.fingerprint, _alert_label(f), f.severity, f.at_ms, a.at_ms,
                                   f.summary))
    for f in open_.values():
        spans.append(AlertSpan(f.fingerprint, _alert_label(f), f.severity, f.at_ms, None,
                               f.summary))
    return sorted(spans, key=lambda s: (s.start_ms, s.label))


def _alert_label(a: Alert) -> str:
    trust = a.labels.get("trust", "")
    where = "all trusts" if trust == ALL_TRUSTS else trust
    return " · ".join(x for x in (a.labels.get("alertname", a.rule), where,
                                  a.labels.get("severity")) if x)


# -- charts --------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.figure import Figure    # no pyplot: no global state, no GUI backend
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _times(ms: np.ndarray) -> np.ndarray:
    return ms.astype("datetime64[ms]")


def _date_axis(ax) -> None:
    import matplotlib.dates as mdates
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def unit(category: str) -> tuple[float, str]:
    """(seconds per unit, name): minutes for C1/C2, hours for C3/C4 (standards of hours)."""
    return (3600.0, "hours") if category in ("C3", "C4") else (60.0, "minutes")


def _time_axis(ax, category: str) -> None:
    ax.set_ylabel(unit(category)[1])
    ax.grid(axis="y", alpha=0.3)


def _target_lines(ax, category: str) -> None:
    t = TARGETS.get(category)
    if t is None:
        return
    div, name = unit(category)
    if t.p90_s is not None:
        ax.axhline(t.p90_s / div, color="#d64545", ls="--", lw=1.4,
                   label=f"90th target {t.p90_s / div:g} {name[:-1] if t.p90_s == div else name}")
    if t.mean_s is not None:
        ax.axhline(t.mean_s / div, color="#d99a00", ls=":", lw=1.6,
                   label=f"mean target {t.mean_s / div:g} {name}")


def chart_distribution(out: ReplayOutputs, window: str) -> str | None:
    """Box plots of each category's mean and 90th centile over non-overlapping windows."""
    if not any(tiles(out.stats, window, c) for c in CATS):
        return None
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, len(CATS))
    for ax, cat in zip(axes, CATS):
        rows = tiles(out.stats, window, cat)
        div = unit(cat)[0]
        data = [[s.mean_s / div for s in rows], [s.p90_s / div for s in rows]]
        if rows:
            ax.boxplot(data, tick_labels=["mean", "90th"], widths=0.55, showfliers=True,
                       medianprops={"color": "#111"})
        _target_lines(ax, cat)
        ax.set_title(f"{cat}  ({len(rows)} windows)")
        _time_axis(ax, cat)
        if TARGETS.get(cat):
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Response times per {window} window, all trusts, against the ARP standards")
    return _png(fig)


def chart_daily(out: ReplayOutputs) -> str | None:
    """Mean and 90th centile per calendar day, bars coloured by their status."""
    if not any(daily(out.stats, c) for c in CATS):
        return None
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, len(CATS))
    for ax, cat in zip(axes, CATS):
        rows = daily(out.stats, cat)
        t = TARGETS.get(cat)
        x = np.arange(len(rows))
        div = unit(cat)[0]
        means = [s.mean_s for s in rows]
        p90s = [s.p90_s for s in rows]
        mean_target, p90_target = (t.mean_s, t.p90_s) if t else (None, None)
        ax.bar(x - 0.2, [v / div for v in means], 0.4, label="mean",
               color=[COLOURS[rate(v, mean_target)] if mean_target else "#8a8f98" for v in means])
        ax.bar(x + 0.2, [v / div for v in p90s], 0.4, label="90th", hatch="//", edgecolor="white",
               color=[COLOURS[rate(v, p90_target)] for v in p90s])
        _target_lines(ax, cat)
        ax.set_xticks(x, [s.start[5:10] for s in rows], rotation=60, fontsize=7)
        ax.set_title(cat)
        _time_axis(ax, cat)
    fig.suptitle("Per calendar day (plain bar: mean, hatched: 90th; green within, amber close, red breached)")
    return _png(fig)


def chart_rolling(out: ReplayOutputs, window: str) -> str | None:
    """Rolling 90th centile (and mean) over time per category, with the target lines."""
    if not any(len(series(out.stats, window, c)["end_ms"]) for c in CATS):
        return None
    fig = _figure(11, 6.4)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, cat in zip(axes, CATS):
        s = series(out.stats, window, cat)
        if len(s["end_ms"]):
            t, div = _times(s["end_ms"]), unit(cat)[0]
            ax.plot(t, s["p90_s"] / div, color=_CAT_COLOURS[cat], lw=1.6, label="90th centile")
            ax.plot(t, s["mean_s"] / div, color="#444", lw=1.0, alpha=0.8, label="mean")
        _target_lines(ax, cat)
        ax.set_title(f"{cat}: rolling {window}, all trusts")
        _time_axis(ax, cat)
        _date_axis(ax)
        ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def chart_shares(out: ReplayOutputs, window: str) -> str | None:
    s = shares_over_time(out.totals, window)
    by_trust = shares_by_trust(out.totals, window)
    if not len(s["end_ms"]) and not by_trust:
        return None
    fig = _figure(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    if len(s["end_ms"]):
        t = _times(s["end_ms"])
        ax1.plot(t, 100 * s["hear_and_treat"], color="#2b6cb0", label="hear and treat")
        ax1.plot(t, 100 * s["redirected"], color="#d64545", label="redirected")
        _date_axis(ax1)
    ax1.set_ylabel("% of calls")
    ax1.set_title(f"Shares of calls per rolling {window}, all trusts")
    ax1.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=8)
    names = list(by_trust)
    x = np.arange(len(names))
    hat = [100 * v[1] / v[0] if v[0] else 0 for v in by_trust.values()]
    red = [100 * v[2] / v[0] if v[0] else 0 for v in by_trust.values()]
    ax2.bar(x - 0.2, hat, 0.4, color="#2b6cb0", label="hear and treat")
    ax2.bar(x + 0.2, red, 0.4, color="#d64545", label="redirected")
    ax2.set_xticks(x, ["all" if n == ALL_TRUSTS else n for n in names], rotation=45, fontsize=8)
    ax2.set_title("Over the whole replay, by trust")
    ax2.grid(axis="y", alpha=0.3)
    return _png(fig)


def chart_alerts(out: ReplayOutputs, spans: list[AlertSpan]) -> str | None:
    if not spans:
        return None
    labels = sorted({s.label for s in spans})
    row = {lab: i for i, lab in enumerate(labels)}
    data_end = max([s.end_ms for s in out.stats] + [s.start_ms for s in spans] +
                   [s.end_ms or 0 for s in spans])
    fig = _figure(11, 1.2 + 0.32 * len(labels))
    ax = fig.subplots()
    for s in spans:
        end = s.end_ms if s.end_ms is not None else data_end
        start = np.datetime64(s.start_ms, "ms")
        ax.barh(row[s.label], np.datetime64(max(end, s.start_ms + 60_000), "ms") - start,
                left=start, height=0.6, color="#d64545" if s.severity == "critical" else "#d99a00",
                hatch="" if s.end_ms is not None else "//", edgecolor="white")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    _date_axis(ax)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Alert timeline (amber: warning, red: critical, hatched: still firing at the end)")
    return _png(fig)


# -- HTML ----------------------------------------------------------------------------------

_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2rem auto;max-width:1150px;color:#1b2430}
h1{margin-bottom:.2rem} .sub{color:#5b6472;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0 1.2rem 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #dde2ea;padding:.3rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}
td.within{color:#1f7a46;font-weight:bold} td.close{color:#a06f00;font-weight:bold}
td.breached{color:#c13030;font-weight:bold}
img{max-width:100%;border:1px solid #dde2ea;margin:.3rem 0 1.2rem 0}
.note{color:#5b6472;font-size:.9rem}
"""


def _dur(s: float | None) -> str:
    if s is None:
        return "–"
    t = round(s)
    if t < 3600:
        return f"{t // 60}m {t % 60:02d}s"
    return f"{t // 3600}h {(t % 3600) // 60:02d}m"


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%" if d else "–"


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return f'<p class="note">{html.escape(alt)}: no data.</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render_html(out: ReplayOutputs, window: str | None = None) -> str:
    e = html.escape
    window = window or pick_window(out.stats)
    s = out.summary
    shown = [x for x in out.stats if x.window == window]
    period = (f"{min(x.start for x in shown)} to {max(x.end for x in shown)}" if shown
              else "no closed windows")
    calls = int(s.get("calls") or 0)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>callstream replay report: {e(out.directory.name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Replay report</h1><p class='sub'>{e(str(out.directory))} · {e(period)} · "
             f"clock {e(str(s.get('clock', '?')))}</p>",
             "<h2>Headline figures</h2><table><tr><th>events</th><th>dead letters</th>"
             "<th>calls</th><th>hear and treat</th><th>redirected</th></tr>",
             f"<tr><td>{int(s.get('events') or 0):,}</td><td>{int(s.get('dead_letters') or 0):,}</td>"
             f"<td>{calls:,}</td><td>{_pct(int(s.get('hear_and_treat') or 0), calls)}</td>"
             f"<td>{_pct(int(s.get('redirected') or 0), calls)}</td></tr></table>",
             "<table id='categories'><tr><th>category</th><th>responses</th><th>mean</th>"
             "<th>mean target</th><th>90th centile</th><th>90th target</th><th>99th</th></tr>"]
    for cat in ("C1", "C1T", "C2", "C3", "C4"):
        c = s["categories"].get(cat) or {}
        t = TARGETS.get(cat)
        mean, p90 = c.get("mean_s"), c.get("p90_s")
        ms = rate(mean, t.mean_s if t else None) or ""
        ps = rate(p90, t.p90_s if t else None) or ""
        parts.append(
            f"<tr data-category='{cat}'><td>{cat}</td><td>{int(c.get('count') or 0):,}</td>"
            f"<td class='{ms}'>{_dur(mean)}</td><td>{_dur(t.mean_s) if t and t.mean_s else '–'}</td>"
            f"<td class='{ps}'>{_dur(p90)}</td><td>{_dur(t.p90_s) if t and t.p90_s else '–'}</td>"
            f"<td>{_dur(c.get('p99_s'))}</td></tr>")
    parts.append("</table><p class='note'>Means are exact; centiles come from the quantile sketch "
                 "(relative error at most 1%). Colours: green within the standard, amber within "
                 "10% of it, red breached.</p>")
    if window is None:
        parts.append("<p class='note'>The replay closed no rolling windows: no time charts.</p>")
    else:
        parts += [f"<h2>Distribution per category ({e(window)} windows)</h2>",
                  _img(chart_distribution(out, window), "distribution per category"),
                  "<h2>Per calendar day</h2>", _img(chart_daily(out), "daily figures"),
                  "<h2>Rolling 90th centiles over time</h2>",
                  _img(chart_rolling(out, window), "rolling 90th centiles"),
                  "<h2>Hear-and-treat and redirect shares</h2>",
                  _img(chart_shares(out, window), "shares of calls")]
    spans = alert_spans(out.alerts)
    parts += ["<h2>Alerts</h2>", _img(chart_alerts(out, spans), "alert timeline")]
    if out.alerts:
        parts.append("<table id='alerts'><tr><th>event time</th><th>status</th><th>severity</th>"
                     "<th>summary</th></tr>")
        for a in out.alerts:
            if a.status == "firing" and a.repeat:
                continue
            parts.append(f"<tr><td>{e(a.at)}</td><td>{e(a.status)}</td><td>{e(a.severity)}</td>"
                         f"<td style='text-align:left'>{e(a.summary)}</td></tr>")
        parts.append("</table>")
    if out.skipped_lines:
        parts.append(f"<p class='note'>{out.skipped_lines} line(s) of the replay files were not "
                     "records and were skipped.</p>")
    parts.append("<p class='note'>Made by <code>callstream report</code>.</p></body></html>")
    return "".join(parts)


def write_report(directory: str | Path, out_path: str | Path | None = None,
                 window: str | None = None) -> Path:
    if importlib.util.find_spec("matplotlib") is None:
        raise CallstreamError("the report needs matplotlib: pip install 'callstream[report]'")
    outputs = load_replay(directory)
    if window is not None and window not in rolling_windows(outputs.stats):
        have = ", ".join(rolling_windows(outputs.stats)) or "none"
        raise CallstreamError(f"--window {window}: the replay has no such rolling window (has {have})")
    target = Path(out_path) if out_path else outputs.directory / "report.html"
    try:
        target.write_text(render_html(outputs, window), encoding="utf-8")
    except OSError as exc:
        raise CallstreamError(f"cannot write {str(target)!r}: {exc.strerror}") from None
    return target


def cli(args) -> int:
    path = write_report(args.directory, args.out, args.window)
    print(f"report written to {path}", file=sys.stderr)
    return 0
