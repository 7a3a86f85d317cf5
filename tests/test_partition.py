"""Two-level processing (per-partition join, then a merge) against the single Processor.

The live worker splits the input by call id over partitions, joins each partition on its own,
and merges the per-bucket outcomes; whatever the number of partitions, the interleaving of
the three input topics within a partition, the chunking and the order in which partition
reports reach the merge, the window records and alerts must be the single Processor's."""

from __future__ import annotations

import pickle
import random
import zlib
from collections import deque

import orjson
import pytest

from producers.simulate import Disorder, england, generate
from streams.aggregate import CollectingOutputs, PartitionMerge, apply_changes
from streams.events import DeadLetter, Event, decode
from streams.partition import PartitionJoin, make_report
from streams.processor import Processor
from streams.replay import load_settings_and_rules
from streams.timefmt import parse_ts

SOURCES = {b"call_received": 0, b"triaged": 1, b"crew_arrived": 2}


def source_of(raw: bytes) -> int:
    for name, i in SOURCES.items():
        if name in raw:
            return i
    return 0


def partition_of(raw: bytes, n: int) -> int:
    try:
        cid = orjson.loads(raw).get("call_id")
    except (orjson.JSONDecodeError, AttributeError):
        cid = None
    return zlib.crc32(str(cid).encode()) % n


def offline(lines: list[bytes], settings, rules):
    out = CollectingOutputs()
    p = Processor(settings, out, rules=rules, position_kind="line")
    for i, line in enumerate(lines, 1):
        r = decode(line, "log", i, settings.max_record_bytes)
        if type(r) is Event:
            p.feed(r)
        else:
            p.reject(DeadLetter(r.reason, r.detail, "log", i, line, "line"))
    p.advance()
    return p, out


def live(lines: list[bytes], settings, rules, partitions: int, seed: int, restart_every=0,
         merge_restart_every=0, whole_states=False, sizes=None, old_snapshots=False,
         old_merge_snapshots=False):
    """Feed the log the way the worker sees it: per partition, three sources read in random
    chunks; reports reach the merge in a random order across partitions. `restart_every` /
    `merge_restart_every`: the joins / the merge carry on from a pickled snapshot every so
    many reports; `whole_states`: reports carry whole waiting states, as before deltas;
    `sizes` collects (waiting keys sent, whole state's keys) per changed outcome;
    `old_snapshots`: the joins' snapshots are as taken before they tracked touched keys;
    `old_merge_snapshots`: the merge's, as taken before it queued outcomes as columns."""
    rng = random.Random(seed)
    queues = [[[] for _ in range(3)] for _ in range(partitions)]
    for i, line in enumerate(lines):
        queues[partition_of(line, partitions)][source_of(line)].append((i, line))
    joins = [PartitionJoin(p, settings) for p in range(partitions)]
    seqs = [0] * partitions
    pending: list = []
    out = CollectingOutputs()
    merge = PartitionMerge(settings, out, rules, partitions)
    held = [{} for _ in range(partitions)]      # each partition's whole waiting state
    taken = 0
    pos = [[0, 0, 0] for _ in range(partitions)]
    while any(pos[p][s] < len(queues[p][s]) for p in range(partitions) for s in range(3)):
        p = rng.randrange(partitions)
        pj = joins[p]
        for s in rng.sample(range(3), rng.randint(1, 3)):
            take = rng.randint(0, 40)
            for i, line in queues[p][s][pos[p][s]:pos[p][s] + take]:
                r = decode(line, "log", i + 1, settings.max_record_bytes)
                if type(r) is Event:
                    pj.feed(r, s)
                else:
                    pj.reject(DeadLetter(r.reason, r.detail, "log", i + 1, line, "line"))
            pos[p][s] = min(pos[p][s] + take, len(queues[p][s]))
        wm = pj.own_watermark([pos[p][s] >= len(queues[p][s])
                               for s in range(3)])
        seqs[p] += 1
        report = make_report(pj, seqs[p], tuple(pos[p]), wm, pj.release(wm))
        pending.append(as_whole_states(report, held[p], sizes) if whole_states or sizes
                       is not None else report)
        if restart_every and seqs[p] % restart_every == 0:
            if old_snapshots:
                del pj.join.__dict__["waiting_touched"]
            joins[p] = pickle.loads(pickle.dumps(pj))     # a snapshot carries on exactly
        while pending and rng.random() < 0.5:
            merge.take(pending.pop(0))
            taken += 1
            if merge_restart_every and taken % merge_restart_every == 0:
                if old_merge_snapshots:
                    as_outcome_queues(merge)
                merge = pickle.loads(pickle.dumps(merge))
                merge.attach(out)
            limit = rng.choice([None, 1, 3])        # closing in bounded steps changes nothing
            while merge.advance(limit=limit) == limit:
                pass
    # end of input: every partition is idle and released up to the global watermark
    for rep in pending:
        merge.take(rep)
    merge.advance()
    g = merge.global_watermark
    for p, pj in enumerate(joins):
        seqs[p] += 1
        merge.take(make_report(pj, seqs[p], tuple(pos[p]), g, pj.release(g)))
    merge.advance()
    return merge, out


def as_outcome_queues(merge: PartitionMerge) -> None:
    """The merge as its snapshots held it before columns: `BucketOutcome`s queued, no
    cursor into the first report's buckets."""
    for st in merge.parts:
        st.queue = deque([b for chunk in st.queue for b in chunk.outcomes()][st.pos:])
        del st.pos


def as_whole_states(report, held: dict, sizes: list | None):
    """`report` as sent before waiting deltas: each changed outcome with the whole state."""
    buckets = []
    for b in report.buckets:
        if b.waiting is not None:
            assert b.waiting_delta
            apply_changes(held, b.waiting.items(), not b.waiting_delta)
            if sizes is not None:
                sizes.append((len(b.waiting), len(held)))
                buckets.append(b)
                continue
            b = b._replace(waiting=dict(held), waiting_delta=False)
        buckets.append(b)
    return report._replace(buckets=buckets)


@pytest.fixture(scope="module")
def shipped():
    return load_settings_and_rules(None, None)


def scenario_log(scenario: str, seed: int, days: float = 1.0) -> list[bytes]:
    trusts = [t for t in england() if t.code in ("LAS", "IOW", "NEAS", "EMAS")]
    return list(generate(trusts, parse_ts("2026-01-14T00:00:00Z"), days, seed=seed,
                         disorder=Disorder(within_lateness=0.05, duplicates=0.02,
                                           malformed=0.002),
                         scenario=scenario))


@pytest.mark.parametrize("scenario,partitions,seed", [
    ("normal", 1, 1), ("normal", 6, 2), ("winter-surge", 4, 3), ("data-gap", 6, 4),
    ("major-incident", 3, 5)])
def test_partitioned_join_and_merge_equal_the_single_processor(shipped, scenario,
                                                              partitions, seed):
    settings, _ = shipped
    lines = scenario_log(scenario, seed)
    _, rules_a = load_settings_and_rules(None, None)
    proc, want = offline(lines, settings, rules_a)
    _, rules_b = load_settings_and_rules(None, None)
    merge, got = live(lines, settings, rules_b, partitions, seed)
    assert merge.frontier == proc.frontier
    assert got.stats_records == want.stats_records
    assert got.alert_records == want.alert_records
    assert len(want.stats_records) > 1000
    if scenario != "normal":
        assert want.alert_records, "the scenario should raise alerts"
    a, b = merge.summary(), proc.summary()
    for key in ("events", "dead_letters", "calls", "hear_and_treat", "redirected",
                "dead_letter_reasons", "duplicates", "stats_records", "alerts", "categories"):
        assert a[key] == b[key], key
    assert sorted(d.raw for d in got.dead_letters) == sorted(d.raw for d in want.dead_letters)


def test_snapshots_of_partition_joins_carry_on_exactly(shipped):
    settings, _ = shipped
    lines = scenario_log("winter-surge", 7, days=0.5)
    _, rules_a = load_settings_and_rules(None, None)
    _, want = offline(lines, settings, rules_a)
    _, rules_b = load_settings_and_rules(None, None)
    _, got = live(lines, settings, rules_b, 3, 7, restart_every=5)
    assert got.stats_records == want.stats_records
    assert got.alert_records == want.alert_records
    _, rules_c = load_settings_and_rules(None, None)
    _, old = live(lines, settings, rules_c, 3, 7, restart_every=5, old_snapshots=True)
    assert old.stats_records == want.stats_records
    assert old.alert_records == want.alert_records


def test_merge_applies_each_report_once_and_in_order(shipped):
    settings, _ = shipped
    pj = PartitionJoin(0, settings)
    merge = PartitionMerge(settings, CollectingOutputs(), None, 1)
    first = make_report(pj, 1, (0, 0, 0), None, [])
    assert merge.take(first) is True
    assert merge.take(first) is False                       # a replayed report: ignored
    with pytest.raises(ValueError, match="lost"):
        merge.take(make_report(pj, 3, (0, 0, 0), None, []))  # a gap is never papered over


@pytest.mark.parametrize("whole_states, merge_restart_every, old_merge", [
    (False, 7, False), (True, 0, False), (True, 11, False), (False, 5, True)])
def test_waiting_deltas_whole_states_and_merge_snapshots_give_the_same(
        shipped, whole_states, merge_restart_every, old_merge):
    """Reports carry changes to the waiting state; reports of before (whole states) still
    apply, and a merge carried on from a snapshot (its merged state rebuilt; its queue
    from before columns) too."""
    settings, _ = shipped
    lines = scenario_log("winter-surge", 8, days=0.5)
    _, rules_a = load_settings_and_rules(None, None)
    _, want = offline(lines, settings, rules_a)
    _, rules_b = load_settings_and_rules(None, None)
    _, got = live(lines, settings, rules_b, 4, 8, merge_restart_every=merge_restart_every,
                  whole_states=whole_states, old_merge_snapshots=old_merge)
    assert got.stats_records == want.stats_records
    assert got.alert_records == want.alert_records
    assert any(r.get("waiting") for r in want.stats_records)


def test_waiting_deltas_are_smaller_than_whole_states(shipped):
    settings, _ = shipped
    sizes: list = []
    live(scenario_log("normal", 9, days=0.5), settings, None, 2, 9, sizes=sizes)
    sent, whole = map(sum, zip(*sizes))
    assert len(sizes) > 200 and sent < whole / 3, (sent, whole)


def test_the_merge_runs_the_rules_over_each_step_in_one_batch(shipped):
    """`PartitionMerge` hands a step's boundaries to `AlertEvaluator.evaluate_batch`
    (`RuleRun`), never `evaluate` one by one: the alerts are still the single Processor's,
    in the same order, with steps of one boundary up to whole stretches of the log, trusts
    first seen inside a step and calls waiting coming and going."""
    settings, _ = shipped
    lines = scenario_log("winter-surge", 11, days=0.5)
    _, rules_a = load_settings_and_rules(None, None)
    _, want = offline(lines, settings, rules_a)
    assert len({r["rule"] for r in want.alert_records}) >= 3
    _, rules_b = load_settings_and_rules(None, None)
    sizes: list[int] = []
    batch = rules_b.evaluate_batch

    def spy(run, emit):
        sizes.append(len(run.ends))
        batch(run, emit)

    def one_by_one(*_args):
        raise AssertionError("the merge evaluated a boundary on its own")

    rules_b.evaluate_batch = spy
    rules_b.evaluate = one_by_one
    _, got = live(lines, settings, rules_b, 4, 11)
    assert got.alert_records == want.alert_records
    assert max(sizes) > 100 and min(sizes) == 1


def test_rules_without_a_batch_form_are_called_at_every_boundary(shipped):
    settings, _ = shipped

    class Recorder:
        def __init__(self) -> None:
            self.ends: list[int] = []

        def evaluate(self, end, records, pressure, last_call, emit) -> None:
            self.ends.append(end)

    rec = Recorder()
    merge, _ = live(scenario_log("normal", 12, days=0.2), settings, rec, 2, 12)
    assert len(rec.ends) > 100
    assert all(b - a == settings.bucket_ms for a, b in zip(rec.ends, rec.ends[1:]))
    assert rec.ends[-1] == merge.frontier
