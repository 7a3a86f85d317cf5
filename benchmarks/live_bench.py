"""Live processor (`callstream worker`) on a real local broker: throughput, memory, latency,
two workers, and a plain Faust baseline in the same run (JSON out).

    python benchmarks/live_bench.py [--events 2000000] [--baseline-events 200000]
                                    [--latency-seconds 60] [--latency-rate 2000]
                                    [--workdir DIR] [--skip-baseline] [--skip-latency]
                                    [--skip-two-workers] [--skip-parity]
                                    [--warmup-events 200000]

Starts a private single-node broker (Apache Kafka, KRaft, loopback; stopped at the end, also
on failure), writes an England-wide synthetic log of `--events` events, and pre-loads it
into fresh 6-partition input topics (one topic prefix per run, so no run sees another's
offsets, changelogs or outputs). Then:

* warm-up: an untimed worker run on the first `--warmup-events` events (own topics), so the
  fresh broker's JIT has compiled its fetch and produce paths before any timing, as a broker
  that has been running would have (reported as `warm_up`).
* one worker: `python -m streams.cli worker` is started on the pre-loaded topics and timed
  from process start until the last window record is visible on `calls.stats` (the last
  window the log can close: end = floor((highest event time - 2 min lateness) / 15 min) *
  15 min, the shortest shipped window). Peak RSS is the summed VmHWM of the worker's process
  tree; the broker's CPU share is its utime+stime over the same interval.
* two workers: the same on a second copy of the load, two workers in one consumer group.
* baseline: `benchmarks/baselines/plain_faust.py` (what a Faust user would write) on the
  first `--baseline-events` events of the same log (it runs at under a thousand events/s
  here, so the whole log would take most of an hour).
* latency: a fresh worker under a steady `--latency-rate` events/s for `--latency-seconds`,
  produced one `send()` per event with the original bytes; event time is the log's, so
  15-minute windows close every ~0.5 s of wall time. The close rule: a window [start, end)
  can close once every input partition has received an event with time >= end + allowed
  lateness (the watermark is the minimum over partitions of the highest event time - 2 min).
  Reported: crew_arrived produced -> first record of its 15-minute window on `calls.stats`,
  and that record's delay after the moment the window became closable.
* parity: the live outputs compared with `callstream replay --offline` of the same log
  (multisets of window records up to the last end the run reached), and the baseline's
  15-minute counts and means with callstream's.

Time-based retention is switched off on the private broker: Kafka judges it by record
timestamps (event times, January 2026 here), so a pre-loaded log older than the default 7
days would be deleted at the broker's next retention check, mid-run. A phase whose worker
fails is reported with the reason (`"error"`) and the bench goes on with the next one.

Output records are detected without reading them while timing: the bench polls the end
offsets of `calls.stats` every 0.1 s and reads the records only afterwards, so the time a
record became visible is known to 0.1 s and the harness costs the workers almost no CPU."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producers.kafka_io import ensure_topics, make_producer  # noqa: E402
from producers.publish import publish_logs  # noqa: E402
from streams.errors import CallstreamError  # noqa: E402
from streams.timefmt import format_ts, parse_ts  # noqa: E402
from streams.topics import TopicNames  # noqa: E402

EVENTS_PER_DAY = 87_000
PARTITIONS = 6
WINDOW_MS = 15 * 60_000          # the shortest shipped window (15m, every 15m)
LATENESS_MS = 2 * 60_000         # the shipped allowed lateness
POLL_S = 0.1
QUIET_S = 5.0                    # no new output for this long ...
GIVE_UP_QUIET_S = 120.0          # ... or, without a sign of completion, this long
RUN_TIMEOUT_S = 600.0
WARMUP_S = 5.0                   # latency: the first seconds of load are not counted
TICK = os.sysconf("SC_CLK_TCK")

GENERATE = (
    "import sys; from producers.simulate import england, generate, write_jsonl; "
    "from streams.timefmt import parse_ts; write_jsonl(generate(england(), "
    "parse_ts('2026-01-01T00:00:00.000Z'), float(sys.argv[1]), seed=11), sys.argv[2])")

OFFLINE = (
    "import sys; from streams.replay import run_offline; "
    "from streams.settings import ProcessingSettings; "
    "run_offline([sys.argv[1]], sys.argv[2], ProcessingSettings(), None, progress=False)")


# -- the log ---------------------------------------------------------------------------------
@dataclass
class LogFacts:
    path: Path
    events: int
    first_ts: int
    last_ts: int

    @property
    def last_window_end(self) -> int:
        """End of the last window the log can close (the watermark never passes later)."""
        wm = self.last_ts - LATENESS_MS
        return wm - wm % WINDOW_MS


def make_log(work: Path, events: int) -> Path:
    log = work / f"england-{events}.jsonl"
    if not log.exists():
        tmp = log.with_suffix(".tmp")
        subprocess.run([sys.executable, "-c", GENERATE, str(events / EVENTS_PER_DAY), str(tmp)],
                       check=True, cwd=ROOT, env=child_env())
        tmp.rename(log)
    return log


def head(log: Path, n: int, dest: Path) -> Path:
    if not dest.exists():
        with open(log, "rb") as src, open(dest, "wb") as out:
            out.writelines(line for _, line in zip(range(n), src))
    return dest


def scan(log: Path) -> LogFacts:
    n, lo, hi = 0, None, None
    with open(log, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            n += 1
            ts = parse_ts(orjson.loads(line).get("ts"))
            if ts is not None:
                lo = ts if lo is None or ts < lo else lo
                hi = ts if hi is None or ts > hi else hi
    if hi is None:
        raise CallstreamError(f"{log}: no event with a valid time")
    return LogFacts(log, n, lo, hi)


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


# -- /proc -----------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()   # [0] is field 3 (state)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime (+ reaped children) of a live process."""
    f = _stat_fields(pid)
    if f is None:
        return None
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICK


def hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_tree(roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": sys.version.split()[0]}


# -- Kafka helpers ---------------------------------------------------------------------------
def stats_partitions(bootstrap: str, topic: str):
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False)
    parts = c.partitions_for_topic(topic) or set()
    return c, [TopicPartition(topic, p) for p in sorted(parts)]


def read_records(bootstrap: str, topic: str, until: dict) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record before the `until` end offsets."""
    from kafka import KafkaConsumer
    wanted = {tp: end for tp, end in until.items() if end > 0}
    if not wanted:
        return []
    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024,
                      fetch_max_bytes=64 * 1024 * 1024)
    out = []
    try:
        c.assign(list(wanted))
        c.seek_to_beginning(*wanted)
        deadline = time.monotonic() + 120
        done: set = set()
        while len(done) < len(wanted) and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=500, max_records=50_000).items():
                for m in msgs:
                    if m.offset < wanted[tp]:
                        out.append((tp.partition, m.offset, m.value))
                if c.position(tp) >= wanted[tp]:
                    done.add(tp)
    finally:
        c.close()
    return out


def record_end(value: bytes) -> tuple[str, int] | None:
    try:
        rec = orjson.loads(value)
        return rec.get("window"), parse_ts(rec.get("end"))
    except (orjson.JSONDecodeError, AttributeError):
        return None


def group_lag(admin, prefix: str, inputs: list) -> int | None:
    """Input messages not yet committed by the run's consumer groups (None: unknown).

    Any group named with the run's prefix counts (the worker may use one group per level);
    a partition counts as consumed when some group has committed its end."""
    try:
        groups = [g.get("group_id") if isinstance(g, dict) else g[0] for g in admin.list_groups()]
        groups = [g for g in groups if g and g.startswith(prefix)]
        if not groups:
            return None
        committed: dict = {}
        for offsets in admin.list_group_offsets({g: None for g in groups}).values():
            for tp, om in offsets.items():
                if tp.topic in inputs:
                    committed[tp] = max(om.offset, committed.get(tp, -1))
    except Exception:
        return None
    if not committed:
        return None
    return sum(max(0, end - committed.get(tp, 0)) for tp, end in _input_ends(admin, inputs).items())


_END_CACHE: dict = {}


def _input_ends(admin, inputs: list) -> dict:
    """End offsets of the (pre-loaded, no longer written) input topics, asked once."""
    key = tuple(inputs)
    if key not in _END_CACHE:
        from kafka import KafkaConsumer, TopicPartition
        c = KafkaConsumer(bootstrap_servers=admin.config["bootstrap_servers"])
        try:
            tps = [TopicPartition(t, p) for t in inputs for p in c.partitions_for_topic(t)]
            _END_CACHE[key] = c.end_offsets(tps)
        finally:
            c.close()
    return _END_CACHE[key]


def keep_everything(bootstrap: str) -> None:
    """Turn off time-based retention on the private broker (every topic, the workers' own
    included). Kafka judges retention by record timestamps, which are event times here: a
    log from January is past the default 7 days, and the broker deletes pre-loaded segments
    at its next retention check (every 5 minutes), in the middle of a run."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.BROKER, "1",
                                            configs={"log.retention.ms": "-1"})])
    finally:
        admin.close()


# -- one timed run ---------------------------------------------------------------------------
@dataclass
class Process:
    name: str
    cmd: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    ready_at: float | None = None
    _seen: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=child_env(), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def check_ready(self, now: float) -> None:
        """Faust logs `Ready` once the worker has started its agents."""
        if self.ready_at is not None:
            return
        try:
            with open(self.log, "rb") as f:
                f.seek(self._seen)
                chunk = f.read()
        except OSError:
            return
        if b"Ready" in chunk:
            self.ready_at = now
        self._seen += len(chunk) - min(len(chunk), 16)

    def last_line(self) -> str:
        """The line that says why it stopped: the last exception, else the last line."""
        try:
            lines = [x for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return ""
        why = [x for x in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", x)]
        return (why or lines or [""])[-1][:300]

    def stop(self) -> int | None:
        p = self.proc
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(10)


@dataclass
class Timed:
    """What one run measured; times are seconds from process start."""

    started: float
    samples: list = field(default_factory=list)     # (t, end offsets per stats partition)
    cpu: list = field(default_factory=list)         # (t, workers' cpu s, broker cpu s)
    hwm_kb: dict = field(default_factory=dict)      # pid -> VmHWM
    ready: list = field(default_factory=list)
    finished_by: str = ""
    records: list = field(default_factory=list)     # (partition, offset, value)

    def visible_at(self, partition_index: int, offset: int) -> float | None:
        for t, ends in self.samples:
            if ends[partition_index] > offset:
                return t
        return None


def timed_run(bootstrap: str, prefix: str, procs: list[Process],
              expected_end: int | None, broker_pid: int | None) -> Timed:
    """Start the processes, watch calls.stats grow, stop them once the output is complete."""
    from kafka.admin import KafkaAdminClient
    topics = TopicNames.with_prefix(prefix)
    consumer, tps = stats_partitions(bootstrap, topics.stats)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    t0 = time.monotonic()
    run = Timed(started=t0)
    try:
        for p in procs:
            p.start()
        last_ends, last_change, next_slow, next_check = None, t0, t0, t0
        tree: set[int] = set()
        while True:
            now = time.monotonic()
            ends = consumer.end_offsets(tps)
            ends = tuple(ends[tp] for tp in tps)
            if ends != last_ends:
                run.samples.append((now - t0, ends))
                last_ends, last_change = ends, now
            if now >= next_slow:
                next_slow = now + 0.5
                tree = process_tree([p.proc.pid for p in procs]) | tree
                for pid in tree:
                    kb = hwm_kb(pid)
                    if kb is not None:
                        run.hwm_kb[pid] = max(kb, run.hwm_kb.get(pid, 0))
                cpu = sum(c for pid in tree if (c := cpu_seconds(pid)) is not None)
                run.cpu.append((now - t0, cpu, cpu_seconds(broker_pid) if broker_pid else None))
                for p in procs:
                    p.check_ready(now - t0)
            for p in procs:
                if p.proc.poll() is not None:
                    raise CallstreamError(f"{p.name} exited with status {p.proc.returncode}: "
                                          f"{p.last_line()}")
            quiet = now - last_change
            if sum(ends) and quiet >= QUIET_S and now >= next_check:
                next_check = now + 1.0
                top = max_end_of_tails(bootstrap, tps, ends)
                if expected_end is not None and top is not None and top >= expected_end:
                    run.finished_by = "last window seen"
                    break
                # with a known last window, only that window ends the run (a worker may commit
                # its input long before its last output); otherwise, consumed input does
                lag = group_lag(admin, prefix, list(topics.inputs))
                if expected_end is None and lag == 0:
                    run.finished_by = "input consumed, output quiet"
                    break
                if quiet >= GIVE_UP_QUIET_S:
                    run.finished_by = f"gave up: output quiet {GIVE_UP_QUIET_S:.0f} s (lag {lag})"
                    break
            if now - t0 > RUN_TIMEOUT_S:
                run.finished_by = f"timed out after {RUN_TIMEOUT_S:.0f} s"
                break
            time.sleep(POLL_S)
    finally:
        for p in procs:
            p.stop()
        admin.close()
        consumer.close()
    run.ready = [p.ready_at for p in procs]
    final = dict(zip(tps, run.samples[-1][1])) if run.samples else {}
    run.records = read_records(bootstrap, topics.stats, final)
    return run


def max_end_of_tails(bootstrap: str, tps: list, ends: tuple) -> int | None:
    """Highest window end among the last record of each stats partition."""
    from kafka import KafkaConsumer
    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False)
    top = None
    try:
        have = [(tp, e) for tp, e in zip(tps, ends) if e > 0]
        c.assign([tp for tp, _ in have])
        for tp, e in have:
            c.seek(tp, e - 1)
        deadline = time.monotonic() + 5
        pending = {tp for tp, _ in have}
        while pending and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=200).items():
                for m in msgs:
                    got = record_end(m.value)
                    if got and got[1] is not None:
                        top = got[1] if top is None else max(top, got[1])
                pending.discard(tp)
    finally:
        c.close()
    return top


def summarize(run: Timed, events: int, cap_end: int | None, broker_pid: int | None) -> dict:
    """Throughput to the last window (<= cap_end) visible; RSS; CPU; startup."""
    ends = [record_end(v) for _, _, v in run.records]
    last_offset: dict[int, int] = {}
    top = None
    for (part, off, _), got in zip(run.records, ends):
        if got is None or got[1] is None:
            continue
        if cap_end is None or got[1] <= cap_end:
            last_offset[part] = max(off, last_offset.get(part, -1))
        top = got[1] if top is None else max(top, got[1])
    done = max((t for part, off in last_offset.items()
                if (t := run.visible_at(part, off)) is not None), default=None)
    first = next((t for t, e in run.samples if sum(e)), None)
    out: dict = {"finished_by": run.finished_by, "stats_records": len(run.records),
                 "last_window_end": format_ts(top) if top is not None else None,
                 "reached_last_window": cap_end is not None and top is not None
                 and top >= cap_end}
    if done is None:
        out["error"] = "no window record appeared"
        return out
    cpu_at = next(((c, b) for t, c, b in run.cpu if t >= done), run.cpu[-1][1:] if run.cpu
                  else (None, None))
    cpu0 = run.cpu[0] if run.cpu else None
    ready = [r for r in run.ready if r is not None]
    out.update({
        "seconds": round(done, 2),
        "events_per_s": round(events / done),
        "startup_s": round(max(ready), 2) if len(ready) == len(run.ready) else None,
        "first_record_s": round(first, 2) if first is not None else None,
        "processing_s": round(done - max(ready), 2) if ready else None,
        "events_per_s_after_startup": round(events / (done - max(ready)))
        if ready and done > max(ready) else None,
        "peak_rss_mb": round(sum(run.hwm_kb.values()) / 1024, 1),
        "worker_cpu_s": round(cpu_at[0], 2) if cpu_at[0] is not None else None,
    })
    if broker_pid and cpu0 and cpu0[2] is not None and cpu_at[1] is not None \
            and done > cpu0[0]:
        broker_s = cpu_at[1] - cpu0[2]
        span = done - cpu0[0]
        out["broker_cpu_s"] = round(broker_s, 2)
        out["broker_cpu_cores"] = round(broker_s / span, 3)
        out["broker_cpu_share_of_machine"] = round(broker_s / span / os.cpu_count(), 3)
        if cpu_at[0]:
            out["broker_share_of_worker_plus_broker_cpu"] = round(
                broker_s / (broker_s + cpu_at[0]), 3)
    return out


# -- commands --------------------------------------------------------------------------------
def worker_help() -> str:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--help"], cwd=ROOT,
                       env=child_env(), capture_output=True, text=True, timeout=120)
    return r.stdout


def worker_cmd(bootstrap: str, prefix: str, work: Path, name: str, extra: list[str]) -> list[str]:
    from streams.broker import free_port
    return [sys.executable, "-m", "streams.cli", "worker", "--bootstrap", bootstrap,
            "--topic-prefix", prefix, "--web-port", str(free_port()), "--data-dir",
            str(work / name), "--partitions", str(PARTITIONS), *extra]


def baseline_cmd(bootstrap: str, prefix: str, work: Path) -> list[str]:
    from streams.broker import free_port
    return [sys.executable, str(ROOT / "benchmarks" / "baselines" / "plain_faust.py"),
            "--bootstrap", bootstrap, "--topic-prefix", prefix, "--web-port", str(free_port()),
            "--data-dir", str(work / "plain-faust")]


def preload(log: Path, bootstrap: str, prefix: str) -> dict:
    r = publish_logs([str(log)], bootstrap, topic_prefix=prefix, partitions=PARTITIONS)
    return {"events": r.sent, "seconds": round(r.elapsed_s, 2),
            "events_per_s": round(r.sent / r.elapsed_s)}


# -- parity ----------------------------------------------------------------------------------
def offline_stats(log: Path, out: Path) -> list[bytes]:
    """stats.jsonl of `callstream replay --offline` (always rerun: the code may have moved)."""
    subprocess.run([sys.executable, "-c", OFFLINE, str(log), str(out)], check=True,
                   cwd=ROOT, env=child_env())
    with open(out / "stats.jsonl", "rb") as f:
        return [line for line in f if line.strip()]


def canonical(value: bytes) -> bytes:
    return orjson.dumps(orjson.loads(value), option=orjson.OPT_SORT_KEYS)


def compare_with_offline(live: list[bytes], offline: list[bytes], up_to: int | None) -> dict:
    """Multiset comparison of window records with end <= up_to (the live run's last end)."""
    if up_to is None:
        return {"identical": False, "why": "no live records"}

    def keep(values):
        return Counter(canonical(v) for v in values
                       if (got := record_end(v)) and got[1] is not None and got[1] <= up_to)
    a, b = keep(live), keep(offline)
    missing, extra = b - a, a - b
    return {"compared_up_to": format_ts(up_to), "live_records": sum(a.values()),
            "offline_records": sum(b.values()), "missing_in_live": sum(missing.values()),
            "extra_in_live": sum(extra.values()), "identical": not missing and not extra}


def compare_baseline(base: list[bytes], offline: list[bytes]) -> dict:
    """The baseline's 15-minute records against callstream's offline ones: count and mean
    exactly (to 1 ms), p90 as a relative difference (numpy interpolates; the sketch is
    within 1 %)."""
    ours = {}
    for v in offline:
        r = orjson.loads(v)
        if r.get("window") == "15m" and r.get("category") in ("C1", "C2", "C3", "C4") \
                and r.get("count"):
            ours[(r["trust"], r["category"], r["end"])] = r
    compared = count_ok = mean_ok = 0
    p90_diff = []
    for v in base:
        r = orjson.loads(v)
        o = ours.get((r["trust"], r["category"], r["end"]))
        if o is None:
            continue
        compared += 1
        count_ok += o["count"] == r["count"]
        mean_ok += abs(o["mean_s"] - r["mean_s"]) <= 0.0015
        if o["count"] == r["count"] and o["count"] >= 20:
            p90_diff.append(abs(r["p90_s"] - o["p90_s"]) / max(o["p90_s"], 1e-9))
    return {"baseline_records": len(base), "compared": compared, "count_equal": count_ok,
            "mean_equal": mean_ok,
            "p90_median_rel_diff": round(float(np.median(p90_diff)), 4) if p90_diff else None}


# -- latency ---------------------------------------------------------------------------------
class StatsWatcher(threading.Thread):
    """Consumes calls.stats as it is written; remembers when each (window, end) first arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                                      auto_offset_reset="earliest", enable_auto_commit=False,
                                      isolation_level="read_committed", fetch_max_wait_ms=10)
        self.first_seen: dict[tuple[str, int], float] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for msgs in self.consumer.poll(timeout_ms=50).values():
                now = time.monotonic()
                for m in msgs:
                    got = record_end(m.value)
                    if got and got[1] is not None:
                        self.first_seen.setdefault(got, now)

    def close(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.consumer.close()


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def latency_run(log: Path, bootstrap: str, work: Path, seconds: float, rate: float,
                idle: list[str]) -> dict:
    from kafka.partitioner.default import murmur2
    prefix = "lb-latency."
    topics = TopicNames.with_prefix(prefix)
    ensure_topics(bootstrap, topics, PARTITIONS)
    n = int(seconds * rate)
    kinds = {"call_received": 0, "triaged": 1, "crew_arrived": 2}
    raws, keys, ts, kind, part = [], [], [], [], []
    with open(log, "rb") as f:
        for line in f:
            if len(raws) >= n:
                break
            line = line.rstrip(b"\n")
            obj = orjson.loads(line)
            raws.append(line)
            ts.append(parse_ts(obj["ts"]))
            kind.append(kinds[obj["type"]])
            key = obj["call_id"].encode()
            keys.append(key)
            part.append((murmur2(key) & 0x7FFFFFFF) % PARTITIONS)
    ts_a, kind_a, part_a = np.array(ts, np.int64), np.array(kind), np.array(part)
    sent = np.zeros(len(raws))

    worker = Process("latency worker", worker_cmd(bootstrap, prefix, work, "w-latency", idle),
                     work / "w-latency.log")
    watcher = StatsWatcher(bootstrap, topics.stats)
    producer = make_producer(bootstrap, linger_ms=1)
    names = topics.inputs
    try:
        worker.start()
        deadline = time.monotonic() + 180
        while worker.ready_at is None:
            if worker.proc.poll() is not None:
                raise CallstreamError(f"latency worker exited: {worker.last_line()}")
            if time.monotonic() > deadline:
                raise CallstreamError("latency worker not ready after 180 s")
            worker.check_ready(time.monotonic())
            time.sleep(0.1)
        time.sleep(2.0)                       # let the group settle after `Ready`
        watcher.start()
        t_start = time.monotonic()
        for i, raw in enumerate(raws):
            due = t_start + i / rate
            wait = due - time.monotonic()
            if wait > 0.002:
                time.sleep(wait)
            sent[i] = time.monotonic()
            producer.send(names[kind[i]], key=keys[i], value=raw, partition=part[i],
                          timestamp_ms=ts[i])
        producer.flush()
        t_end = time.monotonic()
        time.sleep(5.0)                       # the last closable windows
        if worker.proc.poll() is not None:
            raise CallstreamError(f"latency worker exited: {worker.last_line()}")
    finally:
        producer.close()
        watcher.close()
        worker.stop()

    # when each 15-minute window became closable, and when its first record arrived
    lanes = [np.flatnonzero((kind_a == k) & (part_a == p)) for k in range(3)
             for p in range(PARTITIONS)]
    first_end = (ts_a[0] // WINDOW_MS + 1) * WINDOW_MS
    rows = []
    for end in range(first_end, int(ts_a[-1]) + 1, WINDOW_MS):
        thr = end + LATENESS_MS
        firsts = []
        for lane in lanes:
            j = np.searchsorted(ts_a[lane], thr, side="left") if len(lane) else 0
            firsts.append(sent[lane[j]] if j < len(lane) else None)
        if any(f is None for f in firsts):
            continue                          # not closable within the run
        any_i = int(np.searchsorted(ts_a, thr, side="left"))
        rows.append((end, max(firsts), sent[any_i], watcher.first_seen.get(("15m", end))))
    closable = {end: (t_all, t_any, seen) for end, t_all, t_any, seen in rows}
    usable = {e: v for e, v in closable.items() if v[0] >= t_start + WARMUP_S}
    missing = sum(1 for v in usable.values() if v[2] is None)
    win_delay = [(v[2] - v[0]) * 1000 for v in usable.values() if v[2] is not None]
    win_delay_any = [(v[2] - v[1]) * 1000 for v in usable.values() if v[2] is not None]
    crew_raw, crew_bound, crew_excess = [], [], []
    for i in np.flatnonzero(kind_a == 2):
        end = int(ts_a[i] // WINDOW_MS + 1) * WINDOW_MS
        v = usable.get(end)
        if v is None or v[2] is None or sent[i] < t_start + WARMUP_S:
            continue
        crew_raw.append((v[2] - sent[i]) * 1000)
        crew_bound.append((v[0] - sent[i]) * 1000)
        crew_excess.append((v[2] - v[0]) * 1000)
    span_s = (ts_a[-1] - ts_a[0]) / 1000
    produced_s = t_end - t_start
    p99_excess = pct(crew_excess, 99)
    return {
        "events": len(raws), "produce_seconds": round(produced_s, 1),
        "events_per_s": round(len(raws) / produced_s),
        "event_time_speed_x": round(span_s / produced_s),
        "window_15m_closes_every_s": round(WINDOW_MS / 1000 / (span_s / produced_s), 3),
        "close_rule": "a window [start, end) can close once every input topic-partition has "
                      "received an event with time >= end + 2 min allowed lateness",
        "windows_measured": len(usable) - missing, "windows_missing": missing,
        "crew_arrived_to_record_ms": {"p50": pct(crew_raw, 50), "p99": pct(crew_raw, 99),
                                      "samples": len(crew_raw)},
        "crew_arrived_to_closable_ms (bound)": {"p50": pct(crew_bound, 50),
                                                "p99": pct(crew_bound, 99)},
        "closable_to_record_ms (per crew_arrived)": {"p50": pct(crew_excess, 50),
                                                     "p99": p99_excess},
        "closable_to_record_ms (per window)": {"p50": pct(win_delay, 50),
                                               "p99": pct(win_delay, 99),
                                               "max": round(max(win_delay), 1)
                                               if win_delay else None},
        "first_event_past_close_to_record_ms (per window)": {"p50": pct(win_delay_any, 50),
                                                             "p99": pct(win_delay_any, 99)},
        "target_p99_within_1s_of_close": p99_excess is not None and p99_excess <= 1000
        and missing == 0,
    }


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--baseline-events", type=int, default=200_000)
    ap.add_argument("--warmup-events", type=int, default=200_000,
                    help="untimed worker run that warms the fresh broker's JIT first")
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--latency-rate", type=float, default=2000.0)
    ap.add_argument("--workdir", default=None, help="keeps generated logs between runs")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-two-workers", action="store_true")
    ap.add_argument("--skip-parity", action="store_true",
                    help="do not compare live outputs with the offline replay")
    args = ap.parse_args()
    try:
        print(json.dumps(bench(args), indent=2))
    except CallstreamError as exc:
        print(f"live_bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("live_bench: interrupted (workers and broker stopped)", file=sys.stderr)
        sys.exit(130)


def say(what: str) -> None:
    print(f"live_bench: {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def bench(args) -> dict:
    from streams.broker import LocalBroker, free_port
    work = Path(args.workdir or tempfile.mkdtemp(prefix="live-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "live processor (callstream worker)", "machine": machine(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    t = time.perf_counter()
    log = make_log(work, args.events)
    facts = scan(log)
    result["generate_s"] = round(time.perf_counter() - t, 1)
    result["events"] = facts.events
    result["log"] = {"bytes": log.stat().st_size, "first": format_ts(facts.first_ts),
                     "last": format_ts(facts.last_ts),
                     "last_window_end": format_ts(facts.last_window_end)}
    help_text = worker_help()
    idle = ["--idle-timeout", "2s"] if "--idle-timeout" in help_text else []
    result["worker_options"] = idle

    # a fresh cluster and fresh worker state every run (logs and offline outputs are kept)
    state = work / "run"
    shutil.rmtree(state, ignore_errors=True)
    broker = LocalBroker(state / "broker", port=free_port(), controller_port=free_port())
    broker.start(timeout=120, die_with_parent=True)
    try:
        bootstrap = broker.bootstrap
        keep_everything(bootstrap)
        broker_pid = (broker.status() or {}).get("pid")
        # pre-load every copy before any timing, so no run competes with a publisher
        warm_log = head(log, args.warmup_events, work / f"{log.stem}-head-{args.warmup_events}.jsonl")
        warm_facts = scan(warm_log)
        preloads = {"warm-up": ("lb-warm.", warm_log), "one worker": ("lb-one.", log)}
        if not args.skip_two_workers:
            preloads["two workers"] = ("lb-two.", log)
        if not args.skip_baseline:
            base_log = head(log, args.baseline_events,
                            work / f"{log.stem}-head-{args.baseline_events}.jsonl")
            base_facts = scan(base_log)
            preloads["baseline"] = ("lb-base.", base_log)
        say(f"pre-loading {', '.join(preloads)}")
        result["preload"] = {name: preload(path, bootstrap, prefix)
                             for name, (prefix, path) in preloads.items()}

        runs: dict = {}

        def phase(name: str, key: str, what, events: int, cap: int | None) -> None:
            """Run one timed phase; a worker that fails is reported, the bench goes on."""
            say(f"{name.replace('_', ' ')} on {events:,} events")
            try:
                runs[key] = what()
            except CallstreamError as exc:
                result[name] = {"error": str(exc)}
                return
            result[name] = summarize(runs[key], events, cap, broker_pid)

        # a broker runs for months: its JIT compiles the fetch and produce paths once, not
        # during every timed run (a fresh JVM's compiler threads took ~5 s of CPU here, a
        # tenth of the machine's time in a run); an untimed worker run on the head of the
        # log warms every path the timed runs use
        phase("warm_up", "warm", lambda: timed_run(
            bootstrap, "lb-warm.",
            [Process("warm-up worker", worker_cmd(bootstrap, "lb-warm.", state, "warm", idle),
                     state / "warm.log")], warm_facts.last_window_end, broker_pid),
            warm_facts.events, warm_facts.last_window_end)
        result["warm_up"] = {k: result["warm_up"].get(k) for k in
                             ("events", "seconds", "broker_cpu_s", "error")
                             if k in result["warm_up"]}
        phase("one_worker", "one", lambda: timed_run(
            bootstrap, "lb-one.",
            [Process("worker", worker_cmd(bootstrap, "lb-one.", state, "w1", idle),
                     state / "w1.log")], facts.last_window_end, broker_pid),
            facts.events, facts.last_window_end)
        if not args.skip_two_workers:
            phase("two_workers", "two", lambda: timed_run(
                bootstrap, "lb-two.",
                [Process(f"worker {i}", worker_cmd(bootstrap, "lb-two.", state, f"w2-{i}", idle),
                         state / f"w2-{i}.log") for i in (1, 2)],
                facts.last_window_end, broker_pid),
                facts.events, facts.last_window_end)
        if not args.skip_baseline:
            phase("baseline", "base", lambda: timed_run(
                bootstrap, "lb-base.",
                [Process("plain Faust", baseline_cmd(bootstrap, "lb-base.", state),
                         state / "plain-faust.log")], None, broker_pid),
                base_facts.events, None)
            result["baseline"] = {
                "what": "benchmarks/baselines/plain_faust.py: plain Faust (Records, one event "
                        "per agent iteration, Table join, windowed Table of lists, numpy "
                        "percentiles), run on the first events of the same log",
                "events": base_facts.events, **result["baseline"]}
        if not args.skip_latency:
            say(f"latency at {args.latency_rate:,.0f} events/s for {args.latency_seconds:.0f} s")
            try:
                result["latency"] = latency_run(log, bootstrap, state, args.latency_seconds,
                                                args.latency_rate, idle)
            except CallstreamError as exc:
                result["latency"] = {"error": str(exc)}
    finally:
        broker.stop(timeout=30)

    if not args.skip_parity:
        say("offline replay for the parity check")
        offline = offline_stats(log, state / "offline-full")
        parity = {}
        for name, key in (("one_worker", "one"), ("two_workers", "two")):
            if key in runs and "error" not in result[name]:
                top = _parse(result[name].get("last_window_end"))
                parity[name] = compare_with_offline([v for _, _, v in runs[key].records],
                                                    offline, top)
        if "base" in runs and "error" not in result["baseline"]:
            parity["baseline"] = compare_baseline(
                [v for _, _, v in runs["base"].records],
                offline_stats(base_log, state / "offline-head"))
        result["parity_with_offline_replay"] = parity

    one = result["one_worker"]
    rate = one.get("events_per_s")
    for key in ("events_per_s", "peak_rss_mb", "startup_s"):
        result[key] = one.get(key)
    result["broker_cpu_share"] = one.get("broker_cpu_share_of_machine")
    targets = {"events_per_s >= 100000 (one worker)": bool(rate and rate >= 100_000)}
    if "baseline" in result and result["baseline"].get("events_per_s") and rate:
        ratio = rate / result["baseline"]["events_per_s"]
        result["ratio_callstream_to_baseline"] = round(ratio, 1)
        targets[">= 10x plain Faust"] = ratio >= 10
    if "two_workers" in result and result["two_workers"].get("events_per_s") and rate:
        result["ratio_two_to_one_worker"] = round(result["two_workers"]["events_per_s"] / rate, 2)
    if "latency" in result and "error" not in result["latency"]:
        targets["p99 within 1 s of the earliest close"] = \
            result["latency"]["target_p99_within_1s_of_close"]
    result["targets"] = targets
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _parse(text):
    return parse_ts(text) if text else None


if __name__ == "__main__":
    main()
