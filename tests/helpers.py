"""Small builders shared by the tests: events as raw JSON lines."""

from __future__ import annotations

import orjson

from streams.timefmt import parse_ts

BASE = parse_ts("2026-01-14T08:00:00.000Z")


def at(minutes: float) -> int:
    """Epoch ms at `minutes` after 2026-01-14T08:00Z."""
    return BASE + int(round(minutes * 60_000))


def received(cid: str, t: float, trust: str = "LAS", **extra) -> bytes:
    return orjson.dumps({"type": "call_received", "call_id": cid, "ts": at(t), "trust": trust,
                         **extra})


def triaged(cid: str, t: float, category: str | None = "C2", disposition: str = "dispatch",
            **extra) -> bytes:
    rec = {"type": "triaged", "call_id": cid, "ts": at(t), "disposition": disposition, **extra}
    if category is not None:
        rec["category"] = category
    return orjson.dumps(rec)


def arrived(cid: str, t: float, transport_capable: bool = True, **extra) -> bytes:
    return orjson.dumps({"type": "crew_arrived", "call_id": cid, "ts": at(t),
                         "transport_capable": transport_capable, **extra})
