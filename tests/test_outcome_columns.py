"""The merge's columnar path for outcomes (`WindowTotals.add_step`, `OutcomeColumns`) against
the one-at-a-time path the offline Processor uses (`WindowTotals.add_outcomes`): the same
outcomes before the same boundaries give the same records, totals and latest calls, late
ones (their bucket already closed) included, whatever the steps."""

from __future__ import annotations

import random

import numpy as np

from streams.aggregate import CollectingOutputs, WindowTotals
from streams.outcomes import BucketOutcome, OutcomeColumns
from streams.settings import ProcessingSettings
from streams.windows import CALLS, CATEGORY_KEYS, HEAR_AND_TREAT, REDIRECTED, REDIRECTED_C1

T0 = 1_768_348_800_000          # 2026-01-14T00:00:00Z
MIN = 60_000
TRUSTS = ("EMAS", "IOW", "LAS", "NEAS", "SCAS")


def outcomes_by_boundary(rng: random.Random, boundaries: int) -> list[list[tuple]]:
    """Per boundary, per partition: (trusts, calls, responses) as a join reports them;
    mostly in the closing bucket, some late (buckets closed up to 3 h before)."""
    out = []
    for x in range(boundaries):
        end = T0 + (x + 1) * MIN
        per_partition = []
        for _ in range(rng.randint(1, 3)):
            def when() -> int:
                back = rng.choice([0] * 12 + [1, 2, 30, 180]) * MIN
                return end - MIN - back + rng.randrange(MIN)
            calls = [(rng.choice(TRUSTS), when(), rng.choice(
                [CALLS] * 6 + [HEAR_AND_TREAT, REDIRECTED, REDIRECTED_C1]))
                for _ in range(rng.randint(0, 6))]
            responses = [(rng.choice(TRUSTS), rng.choice(CATEGORY_KEYS), when(),
                          rng.choice([0, rng.randint(1, 4_000_000)]))
                         for _ in range(rng.randint(0, 6))]
            per_partition.append((calls, responses))
        out.append(per_partition)
    return out


def summary_of(totals: WindowTotals) -> tuple:
    s = totals.summary()
    return (s, totals.last_call, totals.windows.late_responses, totals.windows.too_late)


def test_columns_before_each_boundary_equal_outcomes_one_at_a_time():
    settings = ProcessingSettings()
    rng = random.Random(5)
    boundaries = 600
    plan = outcomes_by_boundary(rng, boundaries)
    ends = [T0 + (x + 1) * MIN for x in range(boundaries)]

    one_out = CollectingOutputs()
    one = WindowTotals(settings, one_out)
    for end, per_partition in zip(ends, plan):
        for calls, responses in per_partition:
            one.add_outcomes(calls, responses)
        one.close(end, dict)

    col_out = CollectingOutputs()
    col = WindowTotals(settings, col_out)
    x = 0
    steps = []
    while x < boundaries:
        k = min(rng.choice([1, 2, 5, 60, 240]), boundaries - x)
        segments = []
        for j in range(k):
            for calls, responses in plan[x + j]:
                # each partition's outcomes as its report's columns, trusts numbered per report
                cols = OutcomeColumns.from_outcomes([BucketOutcome(ends[x + j], True, calls,
                                                                   responses, None, True)])
                segments.append((cols.trusts, np.full(len(calls), j, np.int64), cols.calls,
                                 np.full(len(responses), j, np.int64), cols.responses))
        rest = col.add_step(ends[x:x + k], segments)
        for j in range(k):
            col.at_boundary(rest[j])
            col.close(ends[x + j], dict)
        steps.append(k)
        x += k
    assert max(steps) > 1 and 1 in steps
    assert col_out.stats_records == one_out.stats_records
    assert summary_of(col) == summary_of(one)
    late = one.windows.late_responses
    assert late > 50 and one.windows.too_late > 0, late      # into closed buckets, and past them
    assert any(r.get("late") for r in one_out.stats_records)


def test_outcome_columns_give_back_the_outcomes():
    outcomes = [
        BucketOutcome(T0 + MIN, True, [("LAS", T0 + 5, CALLS), ("IOW", T0 + 9, REDIRECTED_C1)],
                      [("LAS", "C1T", T0 + 7, 420_000)], {("LAS", "C2"): (3, T0 - 9)}, True),
        BucketOutcome(T0 + 2 * MIN, False, [], [], None, True),
        BucketOutcome(T0 + 3 * MIN, True, [], [("NEAS", "C4", T0 + 3 * MIN - 1, 0)],
                      {("LAS", "C2"): None, ("IOW", "C1"): (1, T0)}, True),
        BucketOutcome(T0 + 4 * MIN, True, [], [], {("IOW", "C1"): (1, T0)}, False),
    ]
    cols = OutcomeColumns.from_outcomes(outcomes)
    assert cols.size == 4 and cols.trusts == ("LAS", "IOW", "NEAS")
    assert cols.outcomes() == outcomes
