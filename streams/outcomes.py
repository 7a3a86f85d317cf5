"""What a partition's join reports per released bucket, for the merge to add up: one
`BucketOutcome` per bucket (the reference join's form), or a report's buckets at once as
`OutcomeColumns` (the columnar join's, and what the merge works on)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from streams.windows import CATEGORY_KEYS, WAIT_CATEGORIES

Waiting = dict  # (trust, category) -> (calls waiting, earliest clock start ms)


class BucketOutcome(NamedTuple):
    """What one partition's join decided while releasing the bucket that ends at `end`.

    The waiting state goes as a change to the last one sent (`waiting_delta`): a handful of
    keys in a busy minute, where the whole state is every trust and category with calls
    waiting; it was most of a report's bytes and of the merge's work. Reports from before
    (whole states) still apply: they unpickle with `waiting_delta` False."""

    end: int
    active: bool                                   # the bucket held events
    calls: list[tuple[str, int, int]]              # (trust, ts, total kind) in window order
    responses: list[tuple[str, str, int, int]]     # (trust, category, clock stop, ms)
    #: changed keys -> (calls waiting, earliest start), None for a key gone; None: unchanged
    waiting: Waiting | None
    waiting_delta: bool = False                    # False: `waiting` is the whole new state


# columns of `OutcomeColumns.buckets`: bucket end, active, [lo, hi) of its calls, responses and
# waiting changes, and whether its waiting changes are the whole new state (older reports)
B_END, B_ACTIVE, B_C0, B_C1, B_R0, B_R1, B_W0, B_W1, B_WHOLE = range(9)


class OutcomeColumns(NamedTuple):
    """A report's bucket outcomes as columns: what the columnar join ships and what the
    merge adds up. A few arrays pickle as their bytes; a tuple per call and response cost
    the joins and the merge more than the join's own work. Trusts are numbered per report
    (`trusts` names them); categories by `CATEGORY_KEYS` (responses) and `WAIT_CATEGORIES`
    (waiting changes)."""

    buckets: np.ndarray      # [bucket, B_*] int64, in bucket order
    calls: np.ndarray        # [call, (trust, ts, total kind)]
    responses: np.ndarray    # [response, (trust, category, clock stop, ms)]
    waiting: np.ndarray      # [change, (trust, category, calls waiting (0: key gone), earliest)]
    trusts: tuple[str, ...]

    @property
    def size(self) -> int:
        """How many buckets."""
        return self.buckets.shape[0]

    @classmethod
    def from_outcomes(cls, outcomes: list[BucketOutcome]) -> "OutcomeColumns":
        """`BucketOutcome`s (the reference join's, older reports') as columns."""
        trust_of: dict[str, int] = {}

        def tid(name: str) -> int:
            t = trust_of.get(name)
            if t is None:
                t = trust_of[name] = len(trust_of)
            return t

        cat = {c: i for i, c in enumerate(CATEGORY_KEYS)}
        wcat = {c: i for i, c in enumerate(WAIT_CATEGORIES)}
        buckets, calls, responses, waiting = [], [], [], []
        for b in outcomes:
            c0, r0, w0 = len(calls), len(responses), len(waiting)
            calls += [(tid(t), ts, kind) for t, ts, kind in b.calls]
            responses += [(tid(t), cat[c], stop, ms) for t, c, stop, ms in b.responses]
            for (t, c), v in (b.waiting or {}).items():
                n, earliest = v if v is not None else (0, 0)
                waiting.append((tid(t), wcat[c], n, earliest))
            buckets.append((b.end, int(b.active), c0, len(calls), r0, len(responses), w0,
                            len(waiting), int(b.waiting is not None and not b.waiting_delta)))
        return cls(_rows(buckets, 9), _rows(calls, 3), _rows(responses, 4), _rows(waiting, 4),
                   tuple(trust_of))

    def outcomes(self) -> list[BucketOutcome]:
        """As `BucketOutcome`s (what the reference join makes of the same input)."""
        names = self.trusts
        calls = [(names[t], ts, kind) for t, ts, kind in self.calls.tolist()]
        responses = [(names[t], CATEGORY_KEYS[c], stop, ms)
                     for t, c, stop, ms in self.responses.tolist()]
        changes = [((names[t], WAIT_CATEGORIES[c]), (n, earliest) if n else None)
                   for t, c, n, earliest in self.waiting.tolist()]
        return [BucketOutcome(end, active == 1, calls[c0:c1], responses[r0:r1],
                              dict(changes[w0:w1]) if w1 > w0 or whole else None, not whole)
                for end, active, c0, c1, r0, r1, w0, w1, whole in self.buckets.tolist()]


def _rows(rows: list, width: int) -> np.ndarray:
    return np.array(rows, np.int64).reshape(len(rows), width)


