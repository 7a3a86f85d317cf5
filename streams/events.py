"""Input events (CONTRACT §1): raw bytes -> typed `Event`, or a `Rejection` with a reason.

One decoder serves the live worker and the offline replay, so both reject exactly the same
records for exactly the same reasons. Reasons are stable, machine-readable codes
(`malformed_json`, `missing_field`, ...) with a human detail naming the field."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import NamedTuple

import base64

import orjson

from streams.timefmt import parse_ts


class EventType(IntEnum):
    """Kinds of input event; the integer order breaks event-time ties deterministically."""

    CALL_RECEIVED = 0
    TRIAGED = 1
    CREW_ARRIVED = 2


class Category(StrEnum):
    C1 = "C1"
    C2 = "C2"
    C3 = "C3"
    C4 = "C4"


class Disposition(StrEnum):
    DISPATCH = "dispatch"
    HEAR_AND_TREAT = "hear_and_treat"
    REDIRECT = "redirect"


_TYPES = {"call_received": EventType.CALL_RECEIVED, "triaged": EventType.TRIAGED,
          "crew_arrived": EventType.CREW_ARRIVED}
TYPE_NAMES = {v: k for k, v in _TYPES.items()}
_CATEGORIES = {c.value: c for c in Category}
_DISPOSITIONS = {d.value: d for d in Disposition}

#: Default ceiling on one record's size: real events are ~200 bytes.
DEFAULT_MAX_RECORD_BYTES = 16 * 1024


class Event(NamedTuple):
    """One validated input event. `ts` is epoch ms; `source`/`position` locate the raw record
    (file name and line number, or topic/partition and offset) for dead letters."""

    ts: int
    type: EventType
    call_id: str
    trust: str | None
    answered_by: str | None        # call_received only
    category: Category | None      # triaged only
    disposition: Disposition | None  # triaged only
    redirect_to: str | None        # triaged only
    resource_id: str | None        # crew_arrived only
    transport_capable: bool        # crew_arrived only (default True)
    raw: bytes
    source: str
    position: int


class Rejection(NamedTuple):
    """Why a record was refused: a stable `reason` code and a human `detail`."""

    reason: str
    detail: str


class DeadLetter(NamedTuple):
    """A rejected record with its original bytes and where it came from (CONTRACT §3)."""

    reason: str
    detail: str
    source: str
    position: int
    raw: bytes
    position_kind: str = "line"  # "line" for files, "offset" for Kafka
    partition: int | None = None  # Kafka partition of the source topic
    key: bytes | None = None      # Kafka key of the source record (calls.deadletter keeps it)

    def to_dict(self) -> dict:
        out = {"reason": self.reason, "detail": self.detail, "source": self.source}
        if self.partition is not None:
            out["partition"] = self.partition
        out[self.position_kind] = self.position
        try:
            out["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            # not text: keep a readable form and the exact bytes
            out["raw"] = self.raw.decode("utf-8", errors="backslashreplace")
            out["raw_base64"] = base64.b64encode(self.raw).decode("ascii")
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _short_str(obj: dict, field: str, limit: int, required: bool) -> str | None | Rejection:
    value = obj.get(field)
    if value is None:
        if required:
            return Rejection("missing_field", f"{field} is required")
        return None
    if type(value) is not str:
        return Rejection("bad_field", f"{field} must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= limit:
        return Rejection("bad_field", f"{field} must be 1-{limit} characters, got {len(value)}")
    return value


def decode(raw: bytes, source: str, position: int,
           max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Event | Rejection:
    """Parse and validate one record; never raises for bad input."""
    if len(raw) > max_bytes:
        return Rejection("oversized", f"record is {len(raw)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("malformed_json", str(exc).split(":")[0][:200])
    return validate(obj, raw, source, position)


def validate(obj: object, raw: bytes, source: str, position: int) -> Event | Rejection:
    """Validate an already-parsed JSON value; the checks are ordered for the common case."""
    if type(obj) is not dict:
        return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    get = obj.get
    type_name = get("type")
    etype = _TYPES.get(type_name) if type(type_name) is str else None
    if etype is None:
        if type_name is None:
            return Rejection("missing_field", "type is required")
        return Rejection("unknown_type", f"type {str(type_name)[:40]!r} is not one of "
                                         "call_received, triaged, crew_arrived")
    call_id = get("call_id")
    if type(call_id) is not str or not 0 < len(call_id) <= 64:
        if call_id is None:
            return Rejection("missing_field", "call_id is required")
        return _short_str(obj, "call_id", 64, True)  # type: ignore[return-value]
    ts_value = get("ts")
    ts = parse_ts(ts_value)
    if ts is None:
        if ts_value is None:
            return Rejection("missing_field", "ts is required")
        return Rejection("bad_timestamp", f"ts {str(ts_value)[:40]!r} is not RFC 3339 with an "
                                          "offset or epoch milliseconds in 2000-2100")
    trust = get("trust")
    if trust is not None and (type(trust) is not str or not 0 < len(trust) <= 16):
        return _short_str(obj, "trust", 16, False)  # type: ignore[return-value]

    if etype is EventType.CALL_RECEIVED:
        if trust is None:
            return Rejection("missing_field", "trust is required on call_received")
        answered_by = get("answered_by")
        if answered_by is not None and (type(answered_by) is not str
                                        or not 0 < len(answered_by) <= 16):
            return _short_str(obj, "answered_by", 16, False)  # type: ignore[return-value]
        return Event(ts, etype, call_id, trust, answered_by or trust, None, None, None, None,
                     True, raw, source, position)

    if etype is EventType.TRIAGED:
        disp_value = get("disposition", "dispatch")
        disposition = _DISPOSITIONS.get(disp_value) if type(disp_value) is str else None
        if disposition is None:
            return Rejection("bad_field", f"disposition {str(disp_value)[:40]!r} is not one of "
                                          "dispatch, hear_and_treat, redirect")
        cat_value = get("category")
        category = None
        if cat_value is not None:
            category = _CATEGORIES.get(cat_value) if type(cat_value) is str else None
            if category is None:
                return Rejection("unknown_category",
                                 f"category {str(cat_value)[:40]!r} is not one of C1, C2, C3, C4")
        elif disposition is Disposition.DISPATCH:
            return Rejection("missing_field", "category is required when disposition is dispatch")
        redirect_to = get("redirect_to")
        if redirect_to is not None and (type(redirect_to) is not str
                                        or not 0 < len(redirect_to) <= 64):
            return _short_str(obj, "redirect_to", 64, False)  # type: ignore[return-value]
        return Event(ts, etype, call_id, trust, None, category, disposition, redirect_to, None,
                     True, raw, source, position)

    resource_id = get("resource_id")
    if resource_id is not None and (type(resource_id) is not str
                                    or not 0 < len(resource_id) <= 64):
        return _short_str(obj, "resource_id", 64, False)  # type: ignore[return-value]
    capable = get("transport_capable", True)
    if type(capable) is not bool:
        return Rejection("bad_field", "transport_capable must be true or false, got "
                                      f"{type(capable).__name__}")
    return Event(ts, etype, call_id, trust, None, None, None, None, resource_id, capable,
                 raw, source, position)
