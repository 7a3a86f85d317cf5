"""`callstream import`: computer-aided-dispatch (CAD) CSV exports -> callstream event logs.

A column-mapping file (TOML) says which column is the call id, each timestamp (format and
time zone), how a priority maps to a category, which units can transport, and optionally a
row filter; `--preset sf-fire` ships the mapping for the San Francisco Fire Department
"Calls for Service" export (see `producers/presets/sf-fire.toml`, which documents every key).

Exports have one row per unit sent to a call, so rows are grouped by call id: the call is
received at the earliest received time of its rows, triaged once (earliest triage time, else
its received time) with the category of its first row, and every row with an arrival time
becomes a `crew_arrived` - the first one stops the clock, the first transport-capable one
gives C1T. Rows that cannot be used are written to a dead-letter file with the file, line
number, reason and the original row text; nothing is dropped without being counted."""

from __future__ import annotations

import csv
import gzip
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from streams.errors import CallstreamError
from streams.events import DeadLetter
from streams.timefmt import MAX_TS_MS, MIN_TS_MS, format_ts

PRESET_DIR = Path(__file__).resolve().parent / "presets"
OUTCOMES = ("C1", "C2", "C3", "C4", "hear_and_treat")

_SCHEMA = {
    "source": {"trust", "delimiter", "encoding", "time_format", "timezone"},
    "columns": {"call_id", "received", "triaged", "arrived", "resource_id", "category", "trust"},
    "time_formats": None,      # any column name -> format
    "categories": None,        # any raw value -> outcome
    "transport_capable": {"column", "values", "default"},
    "filter": None,            # any column name -> list of values
}


class MappingError(CallstreamError):
    """A mistake in a column-mapping file."""


@dataclass(frozen=True)
class Mapping:
    """A validated column mapping (column names, not positions: they are resolved per file)."""

    name: str
    call_id: str
    received: str
    category: str
    categories: dict
    triaged: str | None = None
    arrived: str | None = None
    resource_id: str | None = None
    trust: str | None = None               # constant trust code
    trust_column: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    time_format: str = "iso"
    time_formats: dict | None = None       # column -> format
    timezone: str = "UTC"
    transport_column: str | None = None
    transport_values: frozenset = frozenset()
    transport_default: bool = True
    filter: dict | None = None             # column -> frozenset of accepted values

    def columns(self) -> dict[str, str]:
        """Every column the mapping reads, keyed by where it is named (for error messages)."""
        named = {"columns.call_id": self.call_id, "columns.received": self.received,
                 "columns.category": self.category, "columns.triaged": self.triaged,
                 "columns.arrived": self.arrived, "columns.resource_id": self.resource_id,
                 "columns.trust": self.trust_column,
                 "transport_capable.column": self.transport_column}
        for col in (self.filter or {}):
            named[f"filter.{col!r}"] = col
        return {k: v for k, v in named.items() if v is not None}


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _load_toml(path: Path, what: str) -> dict:
    if not path.exists():
        raise MappingError(f"{what} {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{what} {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise MappingError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_mapping(preset: str | None = None, mapping_file: str | None = None) -> Mapping:
    """The preset's mapping, with `mapping_file` merged over it (its keys win); or the file."""
    if preset is None and mapping_file is None:
        raise MappingError("give --preset NAME or --mapping FILE (presets: "
                           f"{', '.join(presets())})")
    doc: dict = {}
    names = []
    if preset is not None:
        path = PRESET_DIR / f"{preset}.toml"
        if not path.exists():
            raise MappingError(f"unknown preset {preset!r}; available: {', '.join(presets())}")
        doc = _load_toml(path, "preset")
        names.append(preset)
    if mapping_file is not None:
        doc = _merge(doc, _load_toml(Path(mapping_file), "mapping file"))
        names.append(Path(mapping_file).name)
    return parse_mapping(doc, " + ".join(names))


def _string(doc: dict, table: str, key: str, where: str, required: bool = False) -> str | None:
    value = doc.get(table, {}).get(key)
    if value is None:
        if required:
            raise MappingError(f"mapping {where}: {table}.{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise MappingError(f"mapping {where}: {table}.{key} must be a non-empty string, "
                           f"got {value!r}")
    return value


def parse_mapping(doc: dict, name: str = "mapping") -> Mapping:
    """Validate a mapping document; every mistake is one line naming the key."""
    for table, value in doc.items():
        if table not in _SCHEMA:
            raise MappingError(f"mapping {name}: unknown table [{table}] (known: "
                               f"{', '.join(_SCHEMA)})")
        if not isinstance(value, dict):
            raise MappingError(f"mapping {name}: {table} must be a table")
        allowed = _SCHEMA[table]
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    raise MappingError(f"mapping {name}: unknown key {table}.{key} (known: "
                                       f"{', '.join(sorted(allowed))})")
    s = lambda t, k, req=False: _string(doc, t, k, name, req)  # noqa: E731
    call_id, received = s("columns", "call_id", True), s("columns", "received", True)
    category = s("columns", "category", True)
    categories = doc.get("categories", {})
    if not categories:
        raise MappingError(f"mapping {name}: [categories] is required (value of "
                           "columns.category -> C1, C2, C3, C4 or hear_and_treat)")
    for raw, outcome in categories.items():
        if outcome not in OUTCOMES:
            raise MappingError(f"mapping {name}: categories.{raw!r} = {outcome!r} is not one of "
                               f"{', '.join(OUTCOMES)}")
    trust, trust_column = s("source", "trust"), s("columns", "trust")
    if (trust is None) == (trust_column is None):
        raise MappingError(f"mapping {name}: give exactly one of source.trust (a code for "
                           "every call) and columns.trust (a column)")
    if trust is not None and len(trust) > 16:
        raise MappingError(f"mapping {name}: source.trust must be at most 16 characters")
    tz = s("source", "timezone") or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError(f"mapping {name}: source.timezone {tz!r} is not a known time zone "
                           "(e.g. Europe/London, America/Los_Angeles, UTC)") from None
    delimiter = s("source", "delimiter") or ","
    if len(delimiter) != 1:
        raise MappingError(f"mapping {name}: source.delimiter must be one character")
    encoding = s("source", "encoding") or "utf-8"
    try:
        "".encode(encoding)
    except LookupError:
        raise MappingError(f"mapping {name}: source.encoding {encoding!r} is unknown") from None
    formats = doc.get("time_formats", {})
    for col, fmt in formats.items():
        if not isinstance(fmt, str) or not fmt:
            raise MappingError(f"mapping {name}: time_formats.{col!r} must be a format string")
    tc = doc.get("transport_capable", {})
    values = tc.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise MappingError(f"mapping {name}: transport_capable.values must be a list of strings")
    default = tc.get("default", True)
    if not isinstance(default, bool):
        raise MappingError(f"mapping {name}: transport_capable.default must be true or false")
    if values and "column" not in tc:
        raise MappingError(f"mapping {name}: transport_capable.values needs "
                           "transport_capable.column")
    flt = {}
    for col, accepted in doc.get("filter", {}).items():
        if not isinstance(accepted, list) or not all(isinstance(v, str) for v in accepted):
            raise MappingError(f"mapping {name}: filter.{col!r} must be a list of strings")
        flt[col] = frozenset(accepted)
    return Mapping(
        name=name, call_id=call_id, received=received, category=category,
        categories={str(k): v for k, v in categories.items()},
        triaged=s("columns", "triaged"), arrived=s("columns", "arrived"),
        resource_id=s("columns", "resource_id"), trust=trust, trust_column=trust_column,
        delimiter=delimiter, encoding=encoding,
        time_format=s("source", "time_format") or "iso", time_formats=dict(formats),
        timezone=tz, transport_column=s("transport_capable", "column"),
        transport_values=frozenset(values), transport_default=default, filter=flt or None)


# -- time parsing ------------------------------------------------------------------------------
class TimeParser:
    """Text -> epoch ms with a strptime format (or iso / epoch_s / epoch_ms); local times in
    the mapping's zone. Results are cached: exports repeat the same times on every unit row."""

    def __init__(self, fmt: str, tz: str) -> None:
        self.fmt = fmt
        self.tz = ZoneInfo(tz)
        self.cache: dict[str, int | None] = {}

    def __call__(self, text: str) -> int | None:
        got = self.cache.get(text, -1)
        if got != -1:
            return got
        value = self._parse(text.strip())
        if value is not None and not MIN_TS_MS <= value < MAX_TS_MS:
            value = None
        if len(self.cache) < 1_000_000:
            self.cache[text] = value
        return value

    def _parse(self, text: str) -> int | None:
        try:
            if self.fmt == "epoch_ms":
                return int(text)
            if self.fmt == "epoch_s":
                return int(round(float(text) * 1000))
            dt = datetime.fromisoformat(text) if self.fmt == "iso" \
                else datetime.strptime(text, self.fmt)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self.tz)      # an ambiguous local time takes its first reading
        return int(round(dt.timestamp() * 1000))


# -- import ------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    rows: int
    calls: int
    events: Counter
    dead_letters: Counter
    skipped_by_filter: int
    no_arrival: int
    counters: Counter                    # other noteworthy facts (conflicts, fallbacks)
    out: str
    dead_letter_file: str
    elapsed_s: float


class _Row:
    __slots__ = ("source", "line", "raw", "call_id", "trust", "received", "triaged",
                 "outcome", "arrived", "resource", "capable")


def _raw_rows(path: Path, mapping: Mapping) -> Iterator[tuple[int, str, list[str]]]:
    """(line number where the row starts, original text, fields) for every CSV record."""
    captured: list[str] = []
    state = {"line": 0}

    def lines():
        with open(path, newline="", encoding=mapping.encoding, errors="surrogateescape") as f:
            for line in f:
                state["line"] += 1
                captured.append(line)
                yield line

    reader = csv.reader(lines(), delimiter=mapping.delimiter)
    start = 1
    try:
        for fields in reader:
            raw = "".join(captured)
            captured.clear()
            yield start, raw.rstrip("\r\n"), fields
            start = state["line"] + 1
    except csv.Error as exc:
        raise CallstreamError(f"{path.name}: CSV cannot be read at line {state['line']}: "
                              f"{exc}") from None


def read_rows(paths: list[Path], mapping: Mapping, dead: list, counts: Counter) -> list[_Row]:
    """Parse every row; unusable ones go to `dead` (DeadLetter), filtered ones are counted."""
    default_parser = TimeParser(mapping.time_format, mapping.timezone)
    formats = mapping.time_formats or {}
    rows: list[_Row] = []
    for path in paths:
        records = _raw_rows(path, mapping)
        try:
            _, _, header = next(records)
        except StopIteration:
            raise CallstreamError(f"{path.name} is empty (expected a header row)") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        index = {h: i for i, h in enumerate(header)}
        for where, col in mapping.columns().items():
            if col not in index:
                shown = ", ".join(header[:8]) + (" ..." if len(header) > 8 else "")
                raise MappingError(f"mapping {mapping.name}: column {col!r} ({where}) is not in "
                                   f"the header of {path.name} (it has: {shown})")
        col = lambda name: index[name] if name is not None else None  # noqa: E731
        i_id, i_recv, i_cat = col(mapping.call_id), col(mapping.received), col(mapping.category)
        i_tri, i_arr, i_res = col(mapping.triaged), col(mapping.arrived), col(mapping.resource_id)
        i_trust, i_tc = col(mapping.trust_column), col(mapping.transport_column)
        parsers = {c: (TimeParser(formats[c], mapping.timezone) if c in formats
                       else default_parser)
                   for c in (mapping.received, mapping.triaged, mapping.arrived) if c}
        p_recv = parsers[mapping.received]
        p_tri = parsers.get(mapping.triaged)
        p_arr = parsers.get(mapping.arrived)
        filters = [(index[c], ok) for c, ok in (mapping.filter or {}).items()]
        source = path.name
        width = len(header)
        for line, raw, f in records:
            def reject(reason: str, detail: str) -> None:
                data = raw.encode(mapping.encoding, errors="surrogateescape")
                dead.append(DeadLetter(reason, detail, source, line, data, "line"))
            if not any(x.strip() for x in f):
                continue                                  # a blank line is not a row
            counts["rows"] += 1
            if any("\udc80" <= ch <= "\udcff" for ch in raw):
                reject("bad_encoding", f"row is not valid {mapping.encoding}")
                continue
            if len(f) != width:
                reject("wrong_field_count", f"row has {len(f)} fields, the header {width}")
                continue
            if filters and not all(f[i].strip() in ok for i, ok in filters):
                counts["skipped_by_filter"] += 1
                continue
            r = _Row()
            r.source, r.line, r.raw = source, line, raw
            r.call_id = f[i_id].strip()
            if not r.call_id:
                reject("missing_call_id", f"{mapping.call_id} is empty")
                continue
            if len(r.call_id) > 64:
                reject("bad_call_id", f"{mapping.call_id} is longer than 64 characters")
                continue
            text = f[i_recv].strip()
            r.received = p_recv(text) if text else None
            if r.received is None:
                reject("bad_received_time" if text else "missing_received_time",
                       f"{mapping.received} {text!r} is not a time in format "
                       f"{p_recv.fmt!r}" if text else f"{mapping.received} is empty")
                continue
            raw_cat = f[i_cat].strip()
            r.outcome = mapping.categories.get(raw_cat)
            if r.outcome is None:
                reject("unknown_category", f"{mapping.category} {raw_cat!r} is not in the "
                                           "mapping's [categories]")
                continue
            r.triaged = None
            if i_tri is not None:
                text = f[i_tri].strip()
                if text:
                    r.triaged = p_tri(text)
                    if r.triaged is None:
                        reject("bad_triaged_time", f"{mapping.triaged} {text!r} is not a time in "
                                                   f"format {p_tri.fmt!r}")
                        continue
            r.arrived = None
            if i_arr is not None:
                text = f[i_arr].strip()
                if text:
                    r.arrived = p_arr(text)
                    if r.arrived is None:
                        reject("bad_arrived_time", f"{mapping.arrived} {text!r} is not a time in "
                                                   f"format {p_arr.fmt!r}")
                        continue
            if i_trust is not None:
                r.trust = f[i_trust].strip()
                if not 0 < len(r.trust) <= 16:
                    reject("bad_trust", f"{mapping.trust_column} must be 1-16 characters")
                    continue
            else:
                r.trust = mapping.trust
            r.resource = (f[i_res].strip() or None) if i_res is not None else None
            if r.resource is not None and len(r.resource) > 64:
                r.resource = r.resource[:64]
            r.capable = (f[i_tc].strip() in mapping.transport_values) if i_tc is not None \
                else mapping.transport_default
            rows.append(r)
    return rows


def build_events(rows: list[_Row], dead: list, counts: Counter) -> list[tuple]:
    """Group rows by call id into (ts, type order, call id, line, event dict) tuples."""
    calls: dict[str, list[_Row]] = {}
    for r in rows:
        calls.setdefault(r.call_id, []).append(r)
    events = []
    for cid, group in calls.items():
        head = group[0]
        received = min(r.received for r in group)
        if len({r.outcome for r in group}) > 1:
            counts["calls_with_conflicting_category"] += 1
        if len({r.trust for r in group}) > 1:
            counts["calls_with_conflicting_trust"] += 1
        triage_times = [r.triaged for r in group if r.triaged is not None]
        if triage_times:
            triaged = min(triage_times)
            if triaged < received:
                counts["triage_before_received_clamped"] += 1
                triaged = received
        else:
            counts["calls_without_triage_time"] += 1
            triaged = received
        events.append((received, 0, cid, head.line,
                       {"type": "call_received", "call_id": cid, "ts": format_ts(received),
                        "trust": head.trust}))
        tri = {"type": "triaged", "call_id": cid, "ts": format_ts(triaged), "trust": head.trust}
        if head.outcome == "hear_and_treat":
            tri["disposition"] = "hear_and_treat"
        else:
            tri["category"] = head.outcome
            tri["disposition"] = "dispatch"
        events.append((triaged, 1, cid, head.line, tri))
        for r in group:
            if r.arrived is None:
                counts["no_arrival"] += 1
                continue
            if r.arrived < received:
                dead.append(DeadLetter(
                    "arrived_before_received",
                    f"unit on scene {(received - r.arrived) / 1000:.0f} s before the call was "
                    f"received", r.source, r.line, r.raw.encode("utf-8", "surrogateescape"),
                    "line"))
                continue
            ev = {"type": "crew_arrived", "call_id": cid, "ts": format_ts(r.arrived),
                  "trust": head.trust}
            if r.resource is not None:
                ev["resource_id"] = r.resource
            ev["transport_capable"] = r.capable
            events.append((r.arrived, 2, cid, r.line, ev))
    counts["calls"] = len(calls)
    events.sort(key=lambda e: e[:4])
    return events


def import_csv(paths: list[str], mapping: Mapping, out: str,
               dead_letter_file: str | None = None) -> ImportResult:
    """Convert CSV exports to an event log (time order) and a dead-letter file."""
    started = time.perf_counter()
    files = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CallstreamError(f"CSV file {p!r} does not exist")
        if path.is_dir():
            raise CallstreamError(f"{p!r} is a directory; pass the CSV files in it")
        files.append(path)
    out_path = Path(out)
    if not out_path.parent.exists():
        raise CallstreamError(f"output directory {str(out_path.parent)!r} does not exist")
    dead_path = Path(dead_letter_file) if dead_letter_file else default_dead_letter_path(out_path)
    dead: list[DeadLetter] = []
    counts: Counter = Counter()
    rows = read_rows(files, mapping, dead, counts)
    events = build_events(rows, dead, counts)
    opener = gzip.open if out_path.name.endswith(".gz") else open
    by_type: Counter = Counter()
    with opener(out_path, "wb") as f:
        for ev in events:
            by_type[ev[4]["type"]] += 1
            f.write(orjson.dumps(ev[4]) + b"\n")
    dead.sort(key=lambda d: (d.source, d.position))
    with open(dead_path, "wb") as f:
        for d in dead:
            f.write(d.to_json() + b"\n")
    reasons = Counter(d.reason for d in dead)
    other = Counter({k: v for k, v in counts.items()
                     if k not in ("rows", "calls", "skipped_by_filter", "no_arrival")})
    return ImportResult(counts["rows"], counts["calls"], by_type, reasons,
                        counts["skipped_by_filter"], counts["no_arrival"], other, str(out_path),
                        str(dead_path), time.perf_counter() - started)


def default_dead_letter_path(out: Path) -> Path:
    name = out.name
    for suffix in (".jsonl.gz", ".jsonl", ".gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(name + ".dead_letters.jsonl")


def cli(args) -> int:
    mapping = load_mapping(args.preset, args.mapping)
    result = import_csv(args.csv, mapping, args.out, args.dead_letters)
    ev = result.events
    print(f"imported {result.rows:,} rows -> {result.calls:,} calls, {sum(ev.values()):,} events "
          f"({ev['call_received']:,} call_received, {ev['triaged']:,} triaged, "
          f"{ev['crew_arrived']:,} crew_arrived) -> {result.out} in {result.elapsed_s:.1f} s",
          file=sys.stderr)
    dl = sum(result.dead_letters.values())
    detail = ", ".join(f"{k} {v:,}" for k, v in sorted(result.dead_letters.items()))
    print(f"  {result.no_arrival:,} unit rows without an arrival time; "
          f"{result.skipped_by_filter:,} rows skipped by the filter; {dl:,} dead letters"
          f"{' (' + detail + ')' if detail else ''} -> {result.dead_letter_file}",
          file=sys.stderr)
    if result.counters:
        print("  " + "; ".join(f"{k.replace('_', ' ')}: {v:,}"
                               for k, v in sorted(result.counters.items())), file=sys.stderr)
    return 0
