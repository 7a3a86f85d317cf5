"""Published AmbSYS months (NHS England Ambulance Systems Indicators) as simulator calibration.

Reads the monthly CSVs in `../shared/data/ambsys/` (or `$CALLSTREAM_AMBSYS_DIR`) and turns
one organisation's month into the figures the simulator needs: incidents per day, the C1-C4
mix, the hear-and-treat share, the C1T share, the time to identify the nature of the call,
and the mean and 90th centile of every category's response time.

Indicator codes (see the data's README): A7 incidents, A17 hear and treat, A56 face-to-face
incidents, A8/A10/A11/A12 C1-C4 incidents, A9 C1T incidents, A15 mean seconds to identify
the nature of call; mean/90th (seconds) C1 A25/A26, C1T A28/A29, C2 A31/A32, C3 A34/A35,
C4 A37/A38."""

from __future__ import annotations

import calendar
import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from streams.errors import CallstreamError

#: Trust code used in events -> (AmbSYS organisation code, name).
TRUSTS = {
    "LAS": ("RRU", "London Ambulance Service"),
    "NWAS": ("RX7", "North West Ambulance Service"),
    "YAS": ("RX8", "Yorkshire Ambulance Service"),
    "WMAS": ("RYA", "West Midlands Ambulance Service"),
    "EEAST": ("RYC", "East of England Ambulance Service"),
    "EMAS": ("RX9", "East Midlands Ambulance Service"),
    "SWASFT": ("RYF", "South Western Ambulance Service"),
    "SECAMB": ("RYD", "South East Coast Ambulance Service"),
    "SCAS": ("RYE", "South Central Ambulance Service"),
    "NEAS": ("RX6", "North East Ambulance Service"),
    "IOW": ("R1F", "Isle of Wight NHS Trust"),
}
ENGLAND = "england"
_ORG_TO_TRUST = {org: code for code, (org, _) in TRUSTS.items()}

#: Response-time indicators: category -> (mean column, 90th-centile column).
RESPONSE_COLUMNS = {"C1": ("A25", "A26"), "C1T": ("A28", "A29"), "C2": ("A31", "A32"),
                    "C3": ("A34", "A35"), "C4": ("A37", "A38")}
COUNT_COLUMNS = {"C1": "A8", "C2": "A10", "C3": "A11", "C4": "A12"}
_NEEDED = ("A7", "A8", "A9", "A10", "A11", "A12", "A17", "A56",
           *(c for pair in RESPONSE_COLUMNS.values() for c in pair))


@dataclass(frozen=True)
class MonthFigures:
    """One organisation's published month, in the units the simulator uses."""

    trust: str                    # event trust code ("LAS"), or "Eng" for England
    month: str                    # "YYYY-MM"
    days: int
    incidents: int                # A7
    hear_and_treat: int           # A17
    face_to_face: int             # A56
    counts: dict                  # C1..C4 -> incidents with a response (A8, A10, A11, A12)
    c1t: int                      # A9
    response_s: dict              # C1, C1T, C2, C3, C4 -> (mean s, 90th centile s)
    nature_of_call_s: float | None  # A15

    @property
    def incidents_per_day(self) -> float:
        return self.incidents / self.days


def shared_dir() -> Path:
    """The project's shared folder (`../shared` beside the repository, with docs and data):
    `$CALLSTREAM_SHARED`, else the first `shared/` beside the repository or one of its parents
    (a CI clone may live deeper), else `/work/shared`."""
    env = os.environ.get("CALLSTREAM_SHARED")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents[1:]:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared"
    return Path("/work/shared")


def data_dir() -> Path:
    """`$CALLSTREAM_AMBSYS_DIR`, else `data/ambsys` in the shared folder."""
    env = os.environ.get("CALLSTREAM_AMBSYS_DIR")
    if env:
        return Path(env)
    return shared_dir() / "data" / "ambsys"


def _number(value: str) -> float | None:
    value = value.strip()
    if value in ("", "."):
        return None
    try:
        return float(value)
    except ValueError:
        return None


@lru_cache(maxsize=4)
def load_rows(directory: str) -> dict[tuple[str, str], dict[str, float | None]]:
    """(org code, "YYYY-MM") -> {indicator: value}; later files win for a repeated month."""
    path = Path(directory)
    files = sorted(path.glob("AmbSYS_*.csv"))
    if not files:
        raise CallstreamError(f"no AmbSYS data in {str(path)!r} (expected AmbSYS_*.csv); set "
                              "CALLSTREAM_AMBSYS_DIR to the folder with the monthly CSVs")
    rows: dict[tuple[str, str], dict[str, float | None]] = {}
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                try:
                    month = f"{int(rec['Year']):04d}-{int(rec['Month']):02d}"
                except (KeyError, ValueError):
                    continue
                rows[(rec.get("Org Code", ""), month)] = {
                    k: _number(v) for k, v in rec.items()
                    if k and (k.startswith("A") and k[1:].isdigit())}
    return rows


def _months_of(rows, org: str) -> list[str]:
    return sorted(m for (o, m) in rows if o == org)


def _span(months: list[str]) -> str:
    """"2017-08..2021-01, 2025-04..2026-04": the months held, as runs of consecutive months."""
    if not months:
        return "no months"
    def index(m: str) -> int:
        return int(m[:4]) * 12 + int(m[5:7]) - 1
    runs = [[months[0], months[0]]]
    for m in months[1:]:
        if index(m) == index(runs[-1][1]) + 1:
            runs[-1][1] = m
        else:
            runs.append([m, m])
    return ", ".join(a if a == b else f"{a}..{b}" for a, b in runs)


def trust_code(name: str) -> str:
    """Event trust code for a name or org code (`LAS`, `las`, `RRU`); raises for unknown ones."""
    up = name.strip().upper()
    if up in TRUSTS:
        return up
    if up in _ORG_TO_TRUST:
        return _ORG_TO_TRUST[up]
    raise CallstreamError(f"unknown trust {name!r}; known: {', '.join(TRUSTS)} or england")


def parse_month(month: str) -> str:
    parts = month.strip().split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or len(parts[0]) != 4 \
            or not 1 <= int(parts[1]) <= 12:
        raise CallstreamError(f"month {month!r} is not YYYY-MM (e.g. 2026-01)")
    return f"{int(parts[0]):04d}-{int(parts[1]):02d}"


def _figures(trust: str, month: str, row: dict) -> MonthFigures:
    missing = [c for c in _NEEDED if row.get(c) is None]
    if missing:
        raise CallstreamError(f"AmbSYS has no {', '.join(missing[:4])} for {trust} in {month} "
                              "(not yet reporting under ARP?); pick another month")
    year, mon = (int(x) for x in month.split("-"))
    return MonthFigures(
        trust=trust, month=month, days=calendar.monthrange(year, mon)[1],
        incidents=int(row["A7"]), hear_and_treat=int(row["A17"]),
        face_to_face=int(row["A56"]),
        counts={c: int(row[col]) for c, col in COUNT_COLUMNS.items()},
        c1t=int(row["A9"]),
        response_s={c: (float(row[m]), float(row[p])) for c, (m, p) in RESPONSE_COLUMNS.items()},
        nature_of_call_s=row.get("A15"))


def month_figures(trust: str, month: str, directory: str | Path | None = None) -> MonthFigures:
    """The published month of one trust (`LAS`) or of England (`england`)."""
    rows = load_rows(str(directory or data_dir()))
    month = parse_month(month)
    if trust.strip().lower() == ENGLAND:
        org, code = "Eng", "Eng"
    else:
        code = trust_code(trust)
        org = TRUSTS[code][0]
    row = rows.get((org, month))
    if row is None:
        raise CallstreamError(f"no AmbSYS month {month} for {code} (the data has "
                              f"{_span(_months_of(rows, org))})")
    return _figures(code, month, row)


def england_months(trust_months: str, directory: str | Path | None = None) -> list[MonthFigures]:
    """Every trust's figures for one month of England.

    Where the data holds every trust's row (Aug 2017 - Jan 2021) each trust is its own row.
    Where it holds only England and London (Apr 2025 on), London is its own row and the other
    ten trusts share the rest of England: counts and total seconds by subtraction, 90th
    centiles from the published rule that England's is the incident-weighted mean of the
    trusts' (so the trusts together reproduce England's figures), volume split by each
    trust's share of incidents over the last twelve months that have every trust."""
    rows = load_rows(str(directory or data_dir()))
    month = parse_month(trust_months)
    if all((org, month) in rows for org, _ in TRUSTS.values()):
        return [_figures(code, month, rows[(org, month)]) for code, (org, _) in TRUSTS.items()]
    eng = month_figures(ENGLAND, month, directory)
    las = month_figures("LAS", month, directory)
    full = [m for m in _months_of(rows, "Eng") if all((o, m) in rows for o, _ in TRUSTS.values())]
    recent = full[-12:]
    if not recent:
        raise CallstreamError("the AmbSYS data has no month with every trust's row")
    others = [c for c in TRUSTS if c != "LAS"]
    volume = {c: sum(rows[(TRUSTS[c][0], m)]["A7"] or 0 for m in recent) for c in others}
    total = sum(volume.values())
    rest = _subtract(eng, las)
    out = [las]
    for c in others:
        share = volume[c] / total
        out.append(_scaled(rest, c, share))
    return out


def _subtract(eng: MonthFigures, las: MonthFigures) -> MonthFigures:
    """England minus London: exact for counts and means, the weighting rule for 90th centiles."""
    def n_of(f: MonthFigures, cat: str) -> int:
        return f.c1t if cat == "C1T" else f.counts[cat]

    response = {}
    for cat in RESPONSE_COLUMNS:
        n_e, n_l = n_of(eng, cat), n_of(las, cat)
        (m_e, p_e), (m_l, p_l) = eng.response_s[cat], las.response_s[cat]
        n = n_e - n_l
        response[cat] = ((m_e * n_e - m_l * n_l) / n, (p_e * n_e - p_l * n_l) / n)
    noc = None
    if eng.nature_of_call_s is not None:
        noc = eng.nature_of_call_s
    return MonthFigures(
        trust="rest", month=eng.month, days=eng.days,
        incidents=eng.incidents - las.incidents,
        hear_and_treat=eng.hear_and_treat - las.hear_and_treat,
        face_to_face=eng.face_to_face - las.face_to_face,
        counts={c: eng.counts[c] - las.counts[c] for c in COUNT_COLUMNS},
        c1t=eng.c1t - las.c1t, response_s=response, nature_of_call_s=noc)


def _scaled(f: MonthFigures, trust: str, share: float) -> MonthFigures:
    return MonthFigures(
        trust=trust, month=f.month, days=f.days,
        incidents=round(f.incidents * share), hear_and_treat=round(f.hear_and_treat * share),
        face_to_face=round(f.face_to_face * share),
        counts={c: round(n * share) for c, n in f.counts.items()}, c1t=round(f.c1t * share),
        response_s=dict(f.response_s), nature_of_call_s=f.nature_of_call_s)


def latest_month(trust: str, directory: str | Path | None = None) -> str:
    """The most recent month the data holds for a trust (or England)."""
    rows = load_rows(str(directory or data_dir()))
    org = "Eng" if trust.strip().lower() == ENGLAND else TRUSTS[trust_code(trust)][0]
    months = _months_of(rows, org)
    if not months:
        raise CallstreamError(f"no AmbSYS rows for {trust}")
    return months[-1]
