"""Topic names of the wire contract (CONTRACT §4), with the optional isolation prefix."""

from __future__ import annotations

from typing import NamedTuple

RECEIVED = "calls.received"
TRIAGED = "calls.triaged"
ARRIVED = "calls.arrived"
STATS = "calls.stats"
ALERTS = "calls.alerts"
DEADLETTER = "calls.deadletter"

INPUTS = (RECEIVED, TRIAGED, ARRIVED)
OUTPUTS = (STATS, ALERTS, DEADLETTER)

#: Which input topic carries which event type.
TOPIC_FOR_TYPE = {"call_received": RECEIVED, "triaged": TRIAGED, "crew_arrived": ARRIVED}


class TopicNames(NamedTuple):
    """Concrete topic names after applying a prefix (tests isolate runs with one)."""

    received: str
    triaged: str
    arrived: str
    stats: str
    alerts: str
    deadletter: str

    @classmethod
    def with_prefix(cls, prefix: str = "") -> "TopicNames":
        return cls(*(prefix + t for t in INPUTS + OUTPUTS))

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.received, self.triaged, self.arrived)

    def for_type(self, event_type: str) -> str:
        return {"call_received": self.received, "triaged": self.triaged,
                "crew_arrived": self.arrived}[event_type]
