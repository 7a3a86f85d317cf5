"""`callstream replay --offline`: event logs through the processing core, no Kafka (CONTRACT §3).

Reads JSON Lines (`.jsonl`, or gzip `.jsonl.gz`, detected by magic bytes) and writes
summary.json, stats.jsonl, alerts.jsonl and dead_letters.jsonl. Blank lines are not records
and are skipped. Two engines give byte-identical files: `columnar` (`streams.fast`: the same
rules run in bulk, over 10x faster, for month- and year-long logs) and `reference` (the
`Processor`, fed one decoded event at a time; the oracle in the tests). `auto`, the
default, takes the reference for small inputs, where loading the columnar kernels (~0.5 s;
compiling them, once per install, ~1 min) would cost more than it saves;
`CALLSTREAM_REPLAY_ENGINE` overrides the choice."""

from __future__ import annotations

import gzip
import itertools
import os
import sys
import time
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import orjson

from streams.errors import CallstreamError
from streams.events import DeadLetter, Event, decode
from streams.progress import ProgressBar
from streams.processor import CollectingOutputs, Processor
from streams.settings import ConfigError, ProcessingSettings, load_config_file, processing_from_table

_ADVANCE_EVERY = 8192


def alert_line(record: dict) -> bytes:
    """An alert record as one JSON line (the newline from orjson itself: no second copy)."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class FileOutputs:
    """Buffered JSON Lines writers for the replay's output directory."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._stats = open(out_dir / "stats.jsonl", "wb", buffering=1 << 20)
        self._alerts = open(out_dir / "alerts.jsonl", "wb", buffering=1 << 20)
        self._dead = open(out_dir / "dead_letters.jsonl", "wb", buffering=1 << 16)

    def stats(self, record: dict) -> None:
        self._stats.write(orjson.dumps(record) + b"\n")

    def stats_lines(self, data: bytes) -> None:
        """Records already serialised as JSON Lines (the columnar engine writes them)."""
        self._stats.write(data)

    def alert(self, record: dict) -> None:
        self._alerts.write(alert_line(record))

    def alert_lines(self, data: bytes) -> None:
        """Alert records already serialised (the replay's rules process writes them)."""
        self._alerts.write(data)

    def dead_letter(self, letter: DeadLetter) -> None:
        self._dead.write(letter.to_json() + b"\n")

    def close(self) -> None:
        for f in (self._stats, self._alerts, self._dead):
            f.close()


ENGINES = ("auto", "columnar", "reference")
#: inputs below this many records go to the reference engine under `auto`
SMALL_INPUT = 50_000
_SMALL_BYTES = {"plain": 6_000_000, "gzip": 600_000}    # ~SMALL_INPUT lines


def _chosen(engine: str) -> str:
    """The engine asked for, with CALLSTREAM_REPLAY_ENGINE deciding `auto` when set."""
    if engine == "auto":
        engine = os.environ.get("CALLSTREAM_REPLAY_ENGINE", "auto") or "auto"
        if engine not in ENGINES:
            raise CallstreamError(f"CALLSTREAM_REPLAY_ENGINE must be one of "
                                  f"{', '.join(ENGINES)}, got {engine!r}")
    elif engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def process_records(records: Iterable[tuple[str, int, bytes]], settings: ProcessingSettings,
                    rules=None, outputs=None,
                    on_batch: Callable[[Processor], None] | None = None,
                    engine: str = "auto") -> tuple[dict, object]:
    """Decode and process (source, line number, raw bytes) records; returns (summary, outputs).

    This is the whole offline pipeline; `run_offline` only adds files around it. `on_batch`
    is called every few thousand records by the reference engine only."""
    outputs = outputs if outputs is not None else CollectingOutputs()
    engine = _chosen(engine)
    if engine == "auto":
        it = iter(records)
        head = list(itertools.islice(it, SMALL_INPUT))
        engine = "reference" if len(head) < SMALL_INPUT else "columnar"
        records = itertools.chain(head, it)
    if engine == "columnar":
        from streams.fast.engine import ColumnarReplay
        replay = ColumnarReplay(settings, outputs, rules)
        replay.add_records(records)
        return replay.run(), outputs
    processor = Processor(settings, outputs, rules=rules, position_kind="line")
    max_bytes = settings.max_record_bytes
    feed, reject, advance = processor.feed, processor.reject, processor.advance
    n = 0
    for source, lineno, line in records:
        r = decode(line, source, lineno, max_bytes)
        if type(r) is Event:
            feed(r)
        else:
            reject(DeadLetter(r.reason, r.detail, source, lineno, line, "line"))
        n += 1
        if n % _ADVANCE_EVERY == 0:
            advance()
            if on_batch is not None:
                on_batch(processor)
    advance()
    return processor.finish(), outputs


def process_lines(lines: Iterable[bytes], settings: ProcessingSettings, rules=None,
                  source: str = "memory",
                  engine: str = "auto") -> tuple[dict, CollectingOutputs]:
    """Replay raw JSON lines held in memory (tests, benchmarks, parity checks)."""
    return process_records(((source, i, line) for i, line in enumerate(lines, 1)),
                           settings, rules, engine=engine)  # type: ignore[return-value]


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_log(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(reader, raw file) - the raw file's position drives the progress bar."""
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


def check_logs(paths: list[str]) -> list[Path]:
    """Every log must exist and be a readable file before anything is processed."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CallstreamError(f"event log {p!r} does not exist")
        if path.is_dir():
            raise CallstreamError(f"event log {p!r} is a directory; pass the .jsonl files in it")
        if not os.access(path, os.R_OK):
            raise CallstreamError(f"event log {p!r} is not readable (check its permissions)")
        out.append(path)
    return out


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without the newline) for every non-blank line of a log."""
    reader, raw = _open_log(path)
    try:
        lineno = 0
        for line in reader:
            lineno += 1
            if line[-1:] == b"\n":
                line = line[:-2] if line[-2:-1] == b"\r" else line[:-1]
            if not line or line.isspace():
                continue
            yield lineno, line
    except (OSError, EOFError, zlib.error) as exc:
        raise CallstreamError(f"event log {str(path)!r} could not be read past line {lineno}: "
                              f"{exc}") from None
    finally:
        reader.close()
        raw.close()


def run_offline(paths: list[str], out_dir: str | Path, settings: ProcessingSettings,
                rules=None, progress: bool | None = None, engine: str = "auto") -> dict:
    """Replay logs into `out_dir`; returns the summary (also written as summary.json)."""
    engine = _chosen(engine)
    logs = check_logs(paths)
    if engine == "auto":
        small = sum(p.stat().st_size / _SMALL_BYTES["gzip" if _is_gzip(p) else "plain"]
                    for p in logs) < 1
        engine = "reference" if small else "columnar"
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CallstreamError(f"cannot create output directory {str(out)!r}: {exc.strerror}") from None
    outputs = FileOutputs(out)
    total_bytes = sum(p.stat().st_size for p in logs)
    bar = ProgressBar(total_bytes, sys.stderr.isatty() if progress is None else progress)
    if engine == "columnar":
        from streams.fast.engine import ColumnarReplay
        try:
            replay = ColumnarReplay(settings, outputs, rules,
                                    progress=bar.update if bar.enabled else None)
            for path in logs:
                replay.add_file(path)
            bar.phase(replay.records, "processing")
            summary = replay.run()
        finally:
            outputs.close()
        bar.close(summary["events"], total_bytes)
        (out / "summary.json").write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
        return summary
    done = {"bytes": 0}

    def records() -> Iterator[tuple[str, int, bytes]]:
        for path in logs:
            source = path.name
            for lineno, line in iter_lines(path):
                yield source, lineno, line
            done["bytes"] += path.stat().st_size

    try:
        summary, _ = process_records(
            records(), settings, rules, outputs,
            on_batch=lambda p: bar.update(p.events, done["bytes"]) if bar.enabled else None,
            engine="reference")
    finally:
        outputs.close()
    bar.close(summary["events"], total_bytes)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return summary


#: top-level tables of the --config file; anything else is a typo worth one clear line
CONFIG_SECTIONS = ("processing", "alerts")


def load_settings_and_rules(config: str | None, clock: str | None):
    """Processing settings and the rule evaluator from one --config file."""
    from streams.rules import build_evaluator
    doc = load_config_file(config)
    extra = sorted(set(doc) - set(CONFIG_SECTIONS))
    if extra:
        raise ConfigError(f"config: unknown section [{extra[0]}] (known: "
                          f"{', '.join('[' + s + ']' for s in CONFIG_SECTIONS)})")
    settings = processing_from_table(doc.get("processing", {})).with_clock(clock)
    return settings, build_evaluator(doc, settings)


def cli(args) -> int:
    settings, rules = load_settings_and_rules(args.config, args.clock)
    progress = {"auto": None, "always": True, "never": False}[args.progress]
    started = time.perf_counter()
    summary = run_offline(args.logs, args.out, settings, rules, progress)
    print(f"replayed {summary['events']:,} events ({summary['dead_letters']:,} dead letters) "
          f"in {time.perf_counter() - started:.1f} s -> {args.out}", file=sys.stderr)
    return 0
