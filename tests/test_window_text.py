"""Window records as text (`WindowRecords.text`, the merge's output path) against the same
records as dicts written by orjson (`WindowRecords.dicts`, the reference)."""

from __future__ import annotations

import random

import numpy as np
import orjson

from streams.aggregate import TextOutputs
from streams.settings import ProcessingSettings
from streams.windows import CATEGORY_KEYS, WAIT_CATEGORIES, WindowStore, stats_key, text_of

MIN = 60_000
T0 = 1768377600000 + 23 * 3_600_000           # 23:00 UTC: the run crosses midnights


def _store_run(seed: int, big: bool):
    """A store fed random responses (late ones too), call totals and waiting pressure
    (trusts with waiting calls only, names JSON must escape), closed minute by minute."""
    rng = random.Random(seed)
    settings = ProcessingSettings()
    store = WindowStore(settings)
    trusts = ["LAS", "NWAS", 'Quote"Trust', "Ünïcode", "back\\slash", "T" * 40]
    waiting_only = ["WAITER", "Zed"]
    for k in range(1, 26 * 60):
        end = T0 + k * MIN
        for _ in range(rng.randrange(0, 12)):
            trust = rng.choice(trusts)
            cat = rng.choice(CATEGORY_KEYS)
            ms = rng.choice([0, 1, 999, 1000, 1001, rng.randrange(1, 10_000_000)])
            if big and rng.random() < 0.002:
                ms = (1 << 50) + rng.randrange(1000)      # past the kernel's exact range
            late = rng.random() < 0.05
            store.add_response(trust, cat, end - (30 if late else 1) * MIN + 5, ms)
        for _ in range(rng.randrange(0, 4)):
            store.add_total(rng.choice(trusts), end - MIN + 7, rng.randrange(4))
        pressure = {}
        for trust in rng.sample(trusts + waiting_only, rng.randrange(0, 4)):
            cat = rng.choice(WAIT_CATEGORIES)
            pressure[(trust, cat)] = (rng.randrange(1, 30), rng.randrange(0, 5_000_000))
        yield store.close_windows(end, lambda p=pressure: p)


def _check(groups) -> tuple[int, int]:
    texts = fallbacks = 0
    for w in groups:
        records = w.dicts()
        assert records, "a window with no records is not returned"
        text = w.text()
        if text is None:
            fallbacks += 1
            assert any(r.get("sum_s", 0) >= 2 ** 49 / 1000 for r in records)
            text = text_of(records)
        else:
            texts += 1
            assert text == text_of(records)
        values, voff, keys, koff = text
        assert len(voff) == len(koff) == len(records) + 1
        for i, rec in enumerate(records):
            assert values[voff[i]:voff[i + 1] - 1] == orjson.dumps(rec)
            assert keys[koff[i]:koff[i + 1]] == stats_key(rec)
    return texts, fallbacks


def test_window_text_equals_orjson_of_the_dicts():
    texts = fallbacks = 0
    names = set()
    windows = set()
    for groups in _store_run(7, big=False):
        t, f = _check(groups)
        texts += t
        fallbacks += f
        for w in groups:
            names.update(w.trusts())
            windows.add(w.name)
    assert texts > 200 and fallbacks == 0
    assert {"WAITER", "Zed", 'Quote"Trust', "Ünïcode"} <= names
    assert {"15m", "1h", "24h", "day", "mtd"} <= windows


def test_figures_too_large_for_the_kernel_fall_back_to_python():
    texts = fallbacks = 0
    for groups in _store_run(11, big=True):
        t, f = _check(groups)
        texts += t
        fallbacks += f
    assert texts > 100 and fallbacks > 0


def test_text_outputs_count_and_keep_every_record_in_order():
    out = TextOutputs()
    expected = []
    n = 0
    for groups in _store_run(3, big=True):
        n += out.windows(groups)
        expected += [r for w in groups for r in w.dicts()]
    assert n == len(expected) > 1000
    got = b"".join(values for values, _, _, _ in out.stats_text).splitlines()
    assert [orjson.loads(v) for v in got] == expected
    assert np.all([orjson.dumps(r) for r in expected] == got)
