"""Per-call episode join (CONTRACT §2): call_received + triaged + crew_arrived -> one outcome.

The join is fed events in event-time order (the processor's reorder buffer guarantees that for
every event within the allowed lateness), which is what makes it deterministic: an episode is
decided by the events up to the one that completes it, whatever order they reached Kafka in.

Decisions (documented in README "Processing rules"):
- category and disposition come from the latest triage (by event time; ties broken by the raw
  bytes) up to the moment the episode completes; triages after that are `after_final`;
- clock start: `connect` = call received; `arp` = earliest of the first triage time and call
  received + the category's cap; clock stop = first crew arrival; C1T = first
  transport-capable arrival of a C1 call (it may come after the C1 clock stop);
- an arrival before the clock start is inconsistent: that arrival is dead-lettered;
- hear-and-treat and redirect (by triage, or by `answered_by` differing from `trust` at
  receipt) complete at that event; a crew arriving later is counted as `after_final`;
- an episode still open `episode_horizon` after its first event is released as incomplete,
  with the reason (no call_received, no triage, no crew arrival).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from streams.events import Category, DeadLetter, Disposition, Event, EventType

C1T = "C1T"
_RECEIVED, _TRIAGED, _ARRIVED = EventType.CALL_RECEIVED, EventType.TRIAGED, EventType.CREW_ARRIVED
_DISPATCH, _HT, _REDIRECT = Disposition.DISPATCH, Disposition.HEAR_AND_TREAT, Disposition.REDIRECT


class OutcomeSink(Protocol):
    """What the join reports; the processor routes these to windows and the summary."""

    def on_call(self, trust: str, ts: int) -> None: ...
    def on_hear_and_treat(self, trust: str, ts: int) -> None: ...
    def on_redirected(self, trust: str, ts: int, category: str | None) -> None: ...
    def on_response(self, trust: str, category: str, stop_ts: int, ms: int) -> None: ...
    def on_incomplete(self, reason: str, trust: str | None) -> None: ...
    def on_dead_letter(self, letter: DeadLetter) -> None: ...


class Episode:
    """Open state of one call; released as soon as it is decided."""

    __slots__ = ("call_id", "first_ts", "trust", "recv_ts", "first_triage_ts", "triage",
                 "arrival", "tc_arrival_ts", "waiting_key")

    def __init__(self, call_id: str, first_ts: int) -> None:
        self.call_id = call_id
        self.first_ts = first_ts
        self.trust: str | None = None
        self.recv_ts: int | None = None
        self.first_triage_ts: int | None = None
        self.triage: Event | None = None        # latest triage so far
        self.arrival: Event | None = None       # first arrival so far
        self.tc_arrival_ts: int | None = None   # first transport-capable arrival
        self.waiting_key: tuple | None = None   # (trust, category) while waiting for a crew

    def __reduce__(self):
        # a live join snapshots thousands of open episodes every few seconds: as one call
        # and plain tuples, pickling is a fraction of the default's cost (a state dict per
        # slotted object, a Python-level `__getnewargs__` per named tuple)
        triage, arrival = self.triage, self.arrival
        return _episode, (self.call_id, self.first_ts, self.trust, self.recv_ts,
                          self.first_triage_ts, triage and tuple(triage),
                          arrival and tuple(arrival), self.tc_arrival_ts, self.waiting_key)


def _episode(call_id, first_ts, trust, recv_ts, first_triage_ts, triage, arrival,
             tc_arrival_ts, waiting_key) -> "Episode":
    ep = Episode.__new__(Episode)
    ep.call_id, ep.first_ts, ep.trust, ep.recv_ts = call_id, first_ts, trust, recv_ts
    ep.first_triage_ts = first_triage_ts
    ep.triage = triage and Event(*triage)
    ep.arrival = arrival and Event(*arrival)
    ep.tc_arrival_ts, ep.waiting_key = tc_arrival_ts, waiting_key
    return ep


class PendingC1T:
    """A decided C1 response still waiting for its first transport-capable arrival."""

    __slots__ = ("trust", "clock_start", "decided_ts")

    def __init__(self, trust: str, clock_start: int, decided_ts: int) -> None:
        self.trust = trust
        self.clock_start = clock_start
        self.decided_ts = decided_ts


class EpisodeJoin:
    """Joins events per call and reports outcomes to a sink; state is bounded by the horizon."""

    def __init__(self, sink: OutcomeSink, *, clock: str, arp_cap_ms: dict, horizon_ms: int,
                 position_kind: str = "line") -> None:
        self.sink = sink
        self.connect_clock = clock == "connect"
        self.arp_cap_ms = {str(k): v for k, v in arp_cap_ms.items()}
        self.horizon_ms = horizon_ms
        self.position_kind = position_kind
        self.open: dict[str, Episode] = {}
        self._opened: deque[Episode] = deque()           # creation order = first_ts order
        self.decided: dict[str, int] = {}                # call_id -> decision time
        self._decided_order: deque[tuple[int, str]] = deque()
        self.pending_c1t: dict[str, PendingC1T] = {}
        #: (trust, category) -> {call_id: clock_start} for calls waiting for a crew.
        self.waiting: dict[tuple[str, str], dict[str, int]] = {}
        #: (trust, category) -> earliest clock start among its waiting calls, when known;
        #: dropped whenever that call leaves, so `pressure` rescans a key only then
        self._oldest: dict[tuple[str, str], int] = {}
        #: keys whose waiting calls changed since the owner last cleared it (the live
        #: partition join ships only those)
        self.waiting_touched: set[tuple[str, str]] = set()
        self.counters = {"duplicates": 0, "after_final": 0, "inconsistent": 0,
                         "c1_without_transport": 0}
        self.incomplete: dict[str, int] = {}

    # -- events ------------------------------------------------------------------------
    def process(self, ev: Event) -> None:
        cid = ev.call_id
        ep = self.open.get(cid)
        if ep is None:
            if cid in self.decided:
                self._after_decision(ev)
                return
            ep = Episode(cid, ev.ts)
            self.open[cid] = ep
            self._opened.append(ep)
        etype = ev.type
        if etype is _RECEIVED:
            if ep.recv_ts is not None:
                self.counters["duplicates"] += 1
                if ev.ts >= ep.recv_ts:
                    return
                ep.recv_ts = ev.ts  # a late, earlier copy: the earliest receipt counts
                return
            ep.recv_ts = ev.ts
            ep.trust = ev.trust
            self.sink.on_call(ev.trust, ev.ts)
            if ev.answered_by != ev.trust:
                self._decide(ep, ev.ts)
                self.sink.on_redirected(ev.trust, ev.ts, None)
                return
        elif etype is _TRIAGED:
            latest = ep.triage
            if latest is None:
                ep.triage = ev
                ep.first_triage_ts = ev.ts
            else:
                if (ev.ts, ev.raw) == (latest.ts, latest.raw):
                    self.counters["duplicates"] += 1
                    return
                if (ev.ts, ev.raw) > (latest.ts, latest.raw):
                    ep.triage = ev
                if ev.ts < ep.first_triage_ts:
                    ep.first_triage_ts = ev.ts
            if ep.trust is None and ev.trust is not None:
                ep.trust = ev.trust
        else:
            first = ep.arrival
            if first is not None and first.ts == ev.ts and first.raw == ev.raw:
                self.counters["duplicates"] += 1
                return
            if first is None or (ev.ts, ev.raw) < (first.ts, first.raw):
                ep.arrival = ev
            if ev.transport_capable and (ep.tc_arrival_ts is None or ev.ts < ep.tc_arrival_ts):
                ep.tc_arrival_ts = ev.ts
        self._try_complete(ep, ev.ts)

    def _after_decision(self, ev: Event) -> None:
        if ev.type is _ARRIVED and ev.transport_capable:
            pending = self.pending_c1t.pop(ev.call_id, None)
            if pending is not None:
                ms = ev.ts - pending.clock_start
                if ms >= 0:
                    self.sink.on_response(pending.trust, C1T, ev.ts, ms)
                    return
        self.counters["after_final"] += 1

    # -- decisions ---------------------------------------------------------------------
    def _try_complete(self, ep: Episode, now: int) -> None:
        if ep.recv_ts is None or ep.triage is None:
            return
        triage = ep.triage
        disposition = triage.disposition
        trust = ep.trust
        if disposition is _HT:
            self._decide(ep, now)
            self.sink.on_hear_and_treat(trust, now)
            return
        if disposition is _REDIRECT:
            self._decide(ep, now)
            self.sink.on_redirected(trust, now, triage.category)
            return
        category = triage.category
        start = self._clock_start(ep, category)
        arrival = ep.arrival
        if arrival is None:
            key = (trust, category)
            self.waiting_touched.add(key)
            if ep.waiting_key != key:
                self._stop_waiting(ep)
                self.waiting.setdefault(key, {})[ep.call_id] = start
                ep.waiting_key = key
                oldest = self._oldest.get(key)
                if oldest is not None and start < oldest:
                    self._oldest[key] = start
            else:
                self.waiting[key][ep.call_id] = start
                self._oldest.pop(key, None)
            return
        self._decide(ep, now)
        stop = arrival.ts
        if stop < start:
            self.counters["inconsistent"] += 1
            self.sink.on_dead_letter(DeadLetter(
                "arrival_before_clock_start",
                f"crew arrived {(start - stop) / 1000:.3f} s before the clock start of "
                f"{category} call {ep.call_id}", arrival.source, arrival.position, arrival.raw,
                self.position_kind))
            return
        self.sink.on_response(trust, category, stop, stop - start)
        if category is Category.C1:
            tc = ep.tc_arrival_ts
            if tc is not None and tc >= start:
                self.sink.on_response(trust, C1T, tc, tc - start)
            else:
                self.pending_c1t[ep.call_id] = PendingC1T(trust, start, now)

    def _clock_start(self, ep: Episode, category: str) -> int:
        if self.connect_clock:
            return ep.recv_ts
        capped = ep.recv_ts + self.arp_cap_ms[category]
        first_triage = ep.first_triage_ts
        return first_triage if first_triage < capped else capped

    def _decide(self, ep: Episode, now: int) -> None:
        del self.open[ep.call_id]
        self._stop_waiting(ep)
        self.decided[ep.call_id] = now
        self._decided_order.append((now, ep.call_id))
        ep.first_ts = -1  # marks it released for the lazy horizon queue

    def _stop_waiting(self, ep: Episode) -> None:
        if ep.waiting_key is not None:
            self.waiting_touched.add(ep.waiting_key)
            waiting = self.waiting.get(ep.waiting_key)
            if waiting is not None:
                start = waiting.pop(ep.call_id, None)
                if start is not None and start == self._oldest.get(ep.waiting_key):
                    del self._oldest[ep.waiting_key]
                if not waiting:
                    del self.waiting[ep.waiting_key]
            ep.waiting_key = None

    # -- event-time housekeeping -------------------------------------------------------
    def expire(self, now: int) -> None:
        """Release episodes older than the horizon as incomplete; forget old decisions."""
        horizon = self.horizon_ms
        opened = self._opened
        while opened and (opened[0].first_ts < 0 or opened[0].first_ts + horizon <= now):
            ep = opened.popleft()
            if ep.first_ts < 0 or self.open.get(ep.call_id) is not ep:
                continue
            del self.open[ep.call_id]
            self._release_incomplete(ep)
            # remember it so stragglers are counted, not mistaken for a new call
            self.decided[ep.call_id] = now
            self._decided_order.append((now, ep.call_id))
        order = self._decided_order
        while order and order[0][0] + horizon <= now:
            ts, cid = order.popleft()
            if self.decided.get(cid) == ts:
                del self.decided[cid]
                pending = self.pending_c1t.get(cid)
                if pending is not None:
                    del self.pending_c1t[cid]
                    self.counters["c1_without_transport"] += 1

    def _release_incomplete(self, ep: Episode) -> None:
        if ep.recv_ts is None:
            reason = "no_call_received"
        elif ep.triage is None:
            reason = "no_triage"
        else:
            reason = "no_crew_arrival"
        self._stop_waiting(ep)
        self.incomplete[reason] = self.incomplete.get(reason, 0) + 1
        self.sink.on_incomplete(reason, ep.trust)

    def waiting_at(self, key: tuple[str, str]) -> tuple[int, int] | None:
        """(calls waiting for a crew, earliest clock start) of a (trust, category); None
        when no call waits. The earliest start is rescanned only after its call left."""
        calls = self.waiting.get(key)
        if calls is None:
            return None
        oldest = self._oldest.get(key)
        if oldest is None:
            oldest = self._oldest[key] = min(calls.values())
        return len(calls), oldest

    def pressure(self, now: int) -> dict[tuple[str, str], tuple[int, int]]:
        """(trust, category) -> (calls waiting for a crew, longest wait in ms) at `now`."""
        out = {}
        for key in self.waiting:
            n, oldest = self.waiting_at(key)
            longest = now - oldest
            out[key] = (n, longest if longest > 0 else 0)
        return out

    def finish(self) -> None:
        """End of input: every open episode is incomplete, every pending C1T is closed."""
        for ep in list(self.open.values()):
            self._release_incomplete(ep)
        self.open.clear()
        self._opened.clear()
        self.counters["c1_without_transport"] += len(self.pending_c1t)
        self.pending_c1t.clear()
