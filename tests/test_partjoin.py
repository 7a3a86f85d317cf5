"""The live worker's columnar partition join (`streams.fast.partjoin`) against its reference,
`streams.partition.PartitionJoin`: the same chunks and watermarks give the same reports
(outcomes per bucket, waiting changes, dead letters, counters, frontiers), on adversarial
generated logs and on simulated days, carried on from snapshots taken anywhere."""

from __future__ import annotations

import pickle
import random
import zlib
from typing import NamedTuple

import orjson
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from producers.simulate import Disorder, england, generate
from streams.aggregate import CollectingOutputs, PartitionMerge
from streams.fast.partjoin import ColumnarPartitionJoin
from streams.fast.recordbatch import RecordRun
from streams.fast.records import RecordDecoder
from streams.live import feed_chunk
from streams.outcomes import OutcomeColumns
from streams.partition import PartitionJoin, make_report
from streams.replay import load_settings_and_rules
from streams.settings import ProcessingSettings, processing_from_table
from streams.timefmt import parse_ts
from tests.test_columnar import SETTING_CHOICES, logs
from tests.test_partition import offline, scenario_log

TOPICS = ("calls.received", "calls.triaged", "calls.arrived")


class Record(NamedTuple):
    """What the worker reads of a Kafka record."""

    topic: str
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def as_runs(chunk: list[list[Record]], partition: int) -> list[RecordRun | None]:
    """A chunk as the worker feeds it: one run of records per topic (or None)."""
    return [RecordRun.from_records(TOPICS[s], partition, recs) if recs else None
            for s, recs in enumerate(chunk)]


def split(lines: list[bytes], partitions: int) -> list[list[list[Record]]]:
    """Lines to (partition, topic) queues the way producers key them: by call id."""
    queues = [[[] for _ in TOPICS] for _ in range(partitions)]
    for line in lines:
        try:
            doc = orjson.loads(line)
            cid, kind = str(doc.get("call_id")), str(doc.get("type"))
        except (orjson.JSONDecodeError, AttributeError):
            cid, kind = "", ""
        s = 1 if kind == "triaged" else 2 if kind == "crew_arrived" else 0
        p = zlib.crc32(cid.encode()) % partitions
        q = queues[p][s]
        q.append(Record(TOPICS[s], len(q), cid.encode(), line))
    return queues


def normalized(report) -> tuple:
    """A report with the order of different calls' outcomes within a bucket left out: the
    merge adds them up as multisets (and dead letters are compared as a multiset)."""
    outcomes = report.buckets
    if isinstance(outcomes, OutcomeColumns):
        outcomes = outcomes.outcomes()
    buckets = [(b.end, b.active, sorted(b.calls), sorted(b.responses), b.waiting,
                b.waiting_delta) for b in outcomes]
    letters = sorted(report.dead_letters, key=lambda d: (d.raw, d.position, d.reason))
    return (report.partition, report.seq, report.offsets, report.watermark,
            report.released_through, report.first_frontier, report.next_slot,
            report.source_max, buckets, letters, report.counters)


def run_both(lines: list[bytes], settings: ProcessingSettings, partitions: int, seed: int,
             snapshot_every: int = 0, max_take: int = 60) -> tuple[int, list]:
    """Feed both joins the same chunks and watermarks; assert every report is the same.
    Returns (reports compared, the columnar joins)."""
    rng = random.Random(seed)
    decoder = RecordDecoder(settings.max_record_bytes)
    queues = split(lines, partitions)
    ref = [PartitionJoin(p, settings, position_kind="offset") for p in range(partitions)]
    col = [ColumnarPartitionJoin(p, settings) for p in range(partitions)]
    pos = [[0, 0, 0] for _ in range(partitions)]
    seq = [0] * partitions
    compared = 0

    def report(p: int, wm) -> None:
        nonlocal compared
        seq[p] += 1
        a = make_report(ref[p], seq[p], tuple(pos[p]), wm, ref[p].release(wm))
        b = make_report(col[p], seq[p], tuple(pos[p]), wm, col[p].release(wm))
        assert normalized(b) == normalized(a), f"partition {p}, report {seq[p]}"
        compared += 1
        if snapshot_every and rng.randrange(snapshot_every) == 0:
            col[p] = pickle.loads(pickle.dumps(col[p], protocol=5))

    while any(pos[p][s] < len(queues[p][s]) for p in range(partitions) for s in range(3)):
        p = rng.randrange(partitions)
        chunk: list[list[Record]] = [[], [], []]
        for s in rng.sample(range(3), rng.randint(1, 3)):
            take = rng.randint(0, max_take)
            chunk[s] = queues[p][s][pos[p][s]:pos[p][s] + take]
            pos[p][s] = min(pos[p][s] + take, len(queues[p][s]))
        runs = as_runs(chunk, p)
        feed_chunk(ref[p], runs, decoder)
        feed_chunk(col[p], runs, decoder)
        idle = [rng.random() < 0.2 or pos[p][s] >= len(queues[p][s]) for s in range(3)]
        wm = ref[p].own_watermark(idle)
        assert col[p].own_watermark(idle) == wm
        report(p, wm)
    # end of input: every partition released with the highest event time seen anywhere
    top = [m for j in ref for m in j.source_max if m is not None]
    if top:
        for p in range(partitions):
            report(p, max(top) - settings.allowed_lateness_ms + 48 * 3_600_000)
    return compared, col


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=logs(), which=st.integers(0, len(SETTING_CHOICES) - 1),
       partitions=st.integers(1, 3), seed=st.integers(0, 1000))
def test_generated_logs_give_the_reference_reports(lines, which, partitions, seed):
    run_both(lines, SETTING_CHOICES[which], partitions, seed, snapshot_every=4, max_take=8)


def simulated(days: float, seed: int) -> list[bytes]:
    trusts = [t for t in england() if t.code in ("LAS", "IOW", "NEAS", "EMAS")]
    return list(generate(trusts, parse_ts("2026-01-14T00:00:00Z"), days, seed=seed,
                         disorder=Disorder(within_lateness=0.05, beyond_lateness=0.01,
                                           duplicates=0.03, malformed=0.002),
                         scenario="winter-surge"))


def test_simulated_days_give_the_reference_reports_and_forgotten_calls_free_slots():
    lines = simulated(2.0, 11)
    settings = processing_from_table({"episode_horizon": "3h"})
    compared, joins = run_both(lines, settings, 3, 11, snapshot_every=40)
    assert compared > 500
    calls = len({cid for p in split(lines, 1)[0][:1] for cid in (r.key for r in p)})
    slots = sum(len(j.call_of) for j in joins)
    # a 3 h horizon over 2 days: slots of forgotten calls are handed out again, and the raw
    # bytes arena is compacted rather than grown with the input
    assert slots < calls / 3, (slots, calls)
    for j, queues in zip(joins, split(lines, 3)):
        fed = sum(len(r.value) for q in queues for r in q)
        assert j.RAW.shape[0] * 2 < fed, (j.RAW.shape[0], fed)


def test_shipped_settings_on_a_day_of_several_trusts():
    compared, joins = run_both(simulated(1.0, 12), ProcessingSettings(), 4, 12,
                               snapshot_every=25, max_take=200)
    assert compared > 150
    counters = [j.counters() for j in joins]
    assert sum(c["late_events"] for c in counters) > 0
    assert sum(c["duplicates"] for c in counters) > 0


def test_columnar_reports_through_the_merge_equal_the_single_processor():
    """What the worker runs end to end, in process: columnar joins fed random chunks,
    their reports (`OutcomeColumns`) through the merge in random steps, the merge carried on
    from snapshots; the records, alerts and summary are the single Processor's."""
    settings, rules = load_settings_and_rules(None, None)
    lines = scenario_log("winter-surge", 21)
    _, rules_a = load_settings_and_rules(None, None)
    proc, want = offline(lines, settings, rules_a)
    rng = random.Random(21)
    partitions = 4
    decoder = RecordDecoder(settings.max_record_bytes)
    queues = split(lines, partitions)
    joins = [ColumnarPartitionJoin(p, settings) for p in range(partitions)]
    pos = [[0, 0, 0] for _ in range(partitions)]
    seq = [0] * partitions
    out = CollectingOutputs()
    merge = PartitionMerge(settings, out, rules, partitions)
    steps = []

    def report(p: int, wm) -> None:
        nonlocal merge
        seq[p] += 1
        rep = make_report(joins[p], seq[p], tuple(pos[p]), wm, joins[p].release(wm))
        assert isinstance(rep.buckets, OutcomeColumns)
        merge.take(pickle.loads(pickle.dumps(rep, protocol=5)))
        if rng.random() < 0.05:
            merge = pickle.loads(pickle.dumps(merge))
            merge.attach(out)
        limit = rng.choice([None, 1, 7, 240])
        while (k := merge.advance(limit=limit)):
            steps.append(k)
            if k != limit:
                break

    while any(pos[p][s] < len(queues[p][s]) for p in range(partitions) for s in range(3)):
        p = rng.randrange(partitions)
        chunk: list[list[Record]] = [[], [], []]
        for s in rng.sample(range(3), rng.randint(1, 3)):
            take = rng.randint(0, 300)
            chunk[s] = queues[p][s][pos[p][s]:pos[p][s] + take]
            pos[p][s] = min(pos[p][s] + take, len(queues[p][s]))
        feed_chunk(joins[p], as_runs(chunk, p), decoder)
        report(p, joins[p].own_watermark([pos[p][s] >= len(queues[p][s]) for s in range(3)]))
    g = merge.global_watermark
    for p in range(partitions):
        report(p, g)
    assert max(steps) > 20 and min(steps) == 1
    assert merge.frontier == proc.frontier
    assert out.stats_records == want.stats_records
    assert out.alert_records == want.alert_records
    assert len(want.alert_records) > 3
    a, b = merge.summary(), proc.summary()
    for key in ("events", "dead_letters", "calls", "hear_and_treat", "redirected",
                "categories", "late_responses", "too_late", "stats_records",
                "alerts"):
        assert a[key] == b[key], key
