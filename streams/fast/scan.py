"""Numba scanner: JSON Lines bytes -> event columns, for the common, canonical event shape.

Only lines it is certain about are parsed here: one flat JSON object, ASCII strings without
escapes, integers, true/false, each known field once and well-typed, the timestamp as
`YYYY-MM-DDTHH:MM:SS.fffZ` or integer epoch milliseconds. Everything else (escapes, non-ASCII,
floats, nested values, nulls, anything a rejection could come from) is marked `PENDING` and
goes through `streams.events.decode`, so edge cases and rejection reasons stay exactly those
of the reference decoder. Call ids and trusts are interned to integers on the way."""

from __future__ import annotations

import numpy as np
from numba import njit

from streams.timefmt import MAX_TS_MS, MIN_TS_MS

# record codes: bits 0-1 event type (0 received, 1 triaged, 2 arrived, 3 not an event),
# bits 2-4 category (0 none, 1-4 = C1-C4), bits 5-6 disposition (0 dispatch, 1 hear and
# treat, 2 redirect), bit 7 transport_capable (arrivals) / answered by another service
# (receipts)
RECEIVED, TRIAGED, ARRIVED, NOT_EVENT = 0, 1, 2, 3
PENDING = np.uint8(NOT_EVENT)            # to be decoded in Python
REJECT = np.uint8(NOT_EVENT | (1 << 2))  # decoded in Python and rejected
FLAG = 1 << 7
DISPATCH, HEAR_AND_TREAT, REDIRECT = 0, 1, 2

_KEYS = (b"type", b"call_id", b"ts", b"trust", b"answered_by", b"category", b"disposition",
         b"redirect_to", b"resource_id", b"transport_capable")
_WORDS = (b"call_received", b"triaged", b"crew_arrived", b"dispatch", b"hear_and_treat",
          b"redirect")
_KEY_BYTES = np.frombuffer(b"".join(_KEYS), dtype=np.uint8).copy()
_KEY_OFF = np.cumsum([0] + [len(k) for k in _KEYS]).astype(np.int64)
_WORD_BYTES = np.frombuffer(b"".join(_WORDS), dtype=np.uint8).copy()
_WORD_OFF = np.cumsum([0] + [len(w) for w in _WORDS]).astype(np.int64)
_NKEYS = len(_KEYS)
F_TYPE, F_CALL_ID, F_TS, F_TRUST, F_ANSWERED_BY, F_CATEGORY, F_DISPOSITION, F_REDIRECT_TO, \
    F_RESOURCE_ID, F_TRANSPORT = range(_NKEYS)
# value kinds
V_ABSENT, V_STR, V_INT, V_TRUE, V_FALSE, V_NULL = range(6)

_MIN_TS = np.int64(MIN_TS_MS)
_MAX_TS = np.int64(MAX_TS_MS)


# -- interning ----------------------------------------------------------------------------
class Interner:
    """Byte strings -> dense integer ids (open addressing over a byte arena).

    The table holds (31-bit hash tag << 32 | id), so probing rarely touches the arena. Room
    for a batch is made from Python (`reserve`) before a kernel call; kernels never grow."""

    def __init__(self, ids: int = 1 << 12, arena: int = 1 << 16, recent: int = 1 << 16) -> None:
        self.table = np.full(_pow2(ids * 2), -1, dtype=np.int64)
        self.span = np.zeros(ids, dtype=np.int64)      # arena start << 16 | length
        self.arena = np.zeros(arena, dtype=np.uint8)
        self.meta = np.zeros(2, dtype=np.int64)        # ids used, arena bytes used
        #: direct-mapped cache of recently seen strings (hash tag << 32 | id): a call's
        #: events come minutes apart, so most lookups end here, in cache-warm memory
        self.recent = np.full(_pow2(recent), -1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.meta[0])

    def arrays(self):
        return self.table, self.span, self.arena, self.meta, self.recent

    def reserve(self, ids: int, nbytes: int) -> None:
        """Room for `ids` more ids holding `nbytes` more bytes in all."""
        n, used = int(self.meta[0]), int(self.meta[1])
        if n + ids > self.span.shape[0]:
            new = np.zeros(max(n + ids, self.span.shape[0] * 3 // 2), dtype=np.int64)
            new[:n] = self.span[:n]
            self.span = new
        if (n + ids) * 2 > self.table.shape[0]:
            self.table = np.full(_pow2((n + ids) * 2), -1, dtype=np.int64)
            _rehash(self.table, self.span, self.arena, n)
        if used + nbytes > self.arena.shape[0]:
            new = np.zeros(max(used + nbytes, self.arena.shape[0] * 3 // 2), dtype=np.uint8)
            new[:used] = self.arena[:used]
            self.arena = new

    def intern(self, data: bytes) -> int:
        """Id of one byte string (the Python-decoded slow path)."""
        self.reserve(1, len(data))
        arr = np.frombuffer(data, dtype=np.uint8).copy()     # writable: the kernels' type
        return int(_intern(arr, 0, len(data), *self.arrays()))

    def release_table(self) -> None:
        """Drop the lookup tables once no more strings come (ids and bytes stay)."""
        self.table = np.full(2, -1, dtype=np.int64)
        self.recent = np.full(2, -1, dtype=np.int64)

    def get(self, i: int) -> bytes:
        sp = int(self.span[i])
        s = sp >> 16
        return self.arena[s:s + (sp & 0xFFFF)].tobytes()

    def strings(self) -> list[str]:
        """Every id's text (UTF-8, lone surrogates kept), in id order."""
        return [self.get(i).decode("utf-8", "surrogatepass") for i in range(len(self))]


def _pow2(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


@njit(cache=True, nogil=True, _nrt=False)
def _hash(buf, s, e):
    h = np.uint64(14695981039346656037)
    for i in range(s, e):
        h = (h ^ np.uint64(buf[i])) * np.uint64(1099511628211)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    return h


@njit(cache=True, nogil=True, _nrt=False)
def _rehash(table, span, arena, n):
    mask = table.shape[0] - 1
    for i in range(n):
        s = span[i] >> 16
        h = _hash(arena, s, s + (span[i] & 0xFFFF))
        j = np.int64(h & np.uint64(mask))
        while table[j] >= 0:
            j = (j + 1) & mask
        table[j] = (np.int64(h >> np.uint64(33)) << 32) | i


@njit(cache=True, nogil=True, _nrt=False)
def _same(buf, s, n, span, arena, k):
    sp = span[k]
    if (sp & 0xFFFF) != n:
        return False
    a = sp >> 16
    for i in range(n):
        if arena[a + i] != buf[s + i]:
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _intern(buf, s, e, table, span, arena, meta, recent):
    """Id of buf[s:e]; the caller has reserved room."""
    h = _hash(buf, s, e)
    tag = np.int64(h >> np.uint64(33))   # 31 bits: entries stay non-negative
    n = e - s
    rslot = np.int64((h >> np.uint64(13)) & np.uint64(recent.shape[0] - 1))
    v = recent[rslot]
    if v >= 0 and (v >> 32) == tag and _same(buf, s, n, span, arena, v & 0xFFFFFFFF):
        return v & 0xFFFFFFFF
    k = _lookup(buf, s, e, h, tag, table, span, arena, meta)
    recent[rslot] = (tag << 32) | k
    return k


@njit(cache=True, nogil=True, _nrt=False)
def _lookup(buf, s, e, h, tag, table, span, arena, meta):
    mask = table.shape[0] - 1
    j = np.int64(h & np.uint64(mask))
    n = e - s
    while True:
        v = table[j]
        if v < 0:
            break
        if (v >> 32) == tag and _same(buf, s, n, span, arena, v & 0xFFFFFFFF):
            return v & 0xFFFFFFFF
        j = (j + 1) & mask
    k = meta[0]
    a = meta[1]
    for i in range(n):
        arena[a + i] = buf[s + i]
    span[k] = (a << 16) | n
    table[j] = (tag << 32) | k
    meta[0] = k + 1
    meta[1] = a + n
    return k


# -- JSON objects ---------------------------------------------------------------------------
# literals the scanner compares in one go: known keys and the words some values must be,
# each with its closing quote
_KEY_LITS = tuple(k + b'"' for k in _KEYS)
_WORD_LITS = tuple(w + b'"' for w in _WORDS) + (b'C1"', b'C2"', b'C3"', b'C4"')
_LITS = np.frombuffer(b"".join(_KEY_LITS + _WORD_LITS), dtype=np.uint8).copy()
_LIT_OFF = np.cumsum([0] + [len(x) for x in _KEY_LITS + _WORD_LITS]).astype(np.int64)
_W0 = _NKEYS          # literal index of the first word
V_WORD, V_MS = 6, 7   # a word's index (type, disposition, category); a parsed timestamp


def scratch():
    """Scratch arrays for the parsing kernels (allocated by the caller: the kernels run
    without Numba's reference counting, which would otherwise cost more than the parsing)."""
    return np.zeros((_NKEYS, 3), dtype=np.int64), np.zeros(4, dtype=np.int64)


@njit(cache=True, nogil=True, _nrt=False)
def _ws(buf, i, e, stream):
    """Skip JSON whitespace; in a stream a line break ends the line instead."""
    while i < e:
        c = buf[i]
        if c == 32 or c == 9 or c == 13 or (c == 10 and not stream):
            i += 1
        else:
            break
    return i


@njit(cache=True, nogil=True, _nrt=False)
def _match(buf, s, e, lits, offs, which):
    a = offs[which]
    n = offs[which + 1] - a
    if e - s != n:
        return False
    for i in range(n):
        if buf[s + i] != lits[a + i]:
            return False
    return True


@njit(cache=True, nogil=True, _nrt=False)
def _lit_at(buf, i, e, which):
    """End of literal `which` if buf[i:] starts with it, else -1."""
    a = _LIT_OFF[which]
    n = _LIT_OFF[which + 1] - a
    if i + n > e:
        return -1
    for k in range(n):
        if buf[i + k] != _LITS[a + k]:
            return -1
    return i + n


@njit(cache=True, nogil=True, _nrt=False)
def _known_key(buf, i, e):
    """(key index, position after its closing quote) of a known key at buf[i] (just after
    the opening quote), or (-1, -1)."""
    c = buf[i] if i < e else 0
    if c == 116:            # t
        for k in (F_TYPE, F_TS, F_TRUST, F_TRANSPORT):
            j = _lit_at(buf, i, e, k)
            if j >= 0:
                return k, j
    elif c == 99:           # c
        for k in (F_CALL_ID, F_CATEGORY):
            j = _lit_at(buf, i, e, k)
            if j >= 0:
                return k, j
    elif c == 97:           # a
        j = _lit_at(buf, i, e, F_ANSWERED_BY)
        if j >= 0:
            return F_ANSWERED_BY, j
    elif c == 100:          # d
        j = _lit_at(buf, i, e, F_DISPOSITION)
        if j >= 0:
            return F_DISPOSITION, j
    elif c == 114:          # r
        for k in (F_REDIRECT_TO, F_RESOURCE_ID):
            j = _lit_at(buf, i, e, k)
            if j >= 0:
                return k, j
    return -1, -1


_CLASS = np.full(256, 2, np.uint8)     # 0 plain string byte, 1 closing quote, 2 not sure
_CLASS[0x20:0x80] = 0
_CLASS[0x22] = 1
_CLASS[0x5C] = 2


@njit(cache=True, nogil=True, _nrt=False)
def _string_end(buf, i, e):
    """Index of the closing quote of a plain string starting at i, or -1."""
    while i < e:
        k = _CLASS[buf[i]]
        if k != 0:
            return i if k == 1 else -1
        i += 1
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _scan(buf, s, e, f, cache, stream):
    """Parse one flat JSON object starting at buf[s] into f[k] = (kind, a, b) for each
    known key (a string's span, an integer, a word's index, a parsed timestamp).

    Not a stream: the object must fill buf[s:e]; returns e, or -1 when not sure (Python
    decides). A stream: the object must end its line; returns the index of the line break
    (or e at the end of the input), or -1."""
    for k in range(_NKEYS):
        f[k, 0] = V_ABSENT
    i = s
    if i >= e or buf[i] != 123:
        return -1
    i = _ws(buf, i + 1, e, stream)
    if i >= e or buf[i] != 34:
        return -1
    while True:
        if i >= e or buf[i] != 34:
            return -1
        key, j = _known_key(buf, i + 1, e)
        if key < 0:
            j = _string_end(buf, i + 1, e)
            if j < 0:
                return -1
            j += 1
        i = _ws(buf, j, e, stream)
        if i >= e or buf[i] != 58:
            return -1
        i = _ws(buf, i + 1, e, stream)
        if i >= e:
            return -1
        c = buf[i]
        a = np.int64(0)
        b = np.int64(0)
        if c == 34:
            kind = V_STR
            done = False
            if key == F_TS and i + 25 < e and buf[i + 25] == 34:
                t = parse_ts_text(buf, i + 1, i + 25, cache)
                if t >= 0:
                    kind = V_MS
                    a = t
                    i += 26
                    done = True
            elif key == F_TYPE or key == F_DISPOSITION:
                w0 = _W0 if key == F_TYPE else _W0 + 3
                for w in range(w0, w0 + 3):
                    j = _lit_at(buf, i + 1, e, w)
                    if j >= 0:
                        kind = V_WORD
                        a = w - w0
                        i = j
                        done = True
                        break
            elif key == F_CATEGORY:
                for w in range(_W0 + 6, _W0 + 10):
                    j = _lit_at(buf, i + 1, e, w)
                    if j >= 0:
                        kind = V_WORD
                        a = w - _W0 - 5       # C1..C4 -> 1..4
                        i = j
                        done = True
                        break
            if not done:
                ve = _string_end(buf, i + 1, e)
                if ve < 0:
                    return -1
                a = i + 1
                b = ve
                i = ve + 1
        elif c == 116:
            if i + 4 <= e and buf[i + 1] == 114 and buf[i + 2] == 117 and buf[i + 3] == 101:
                kind = V_TRUE
                i += 4
            else:
                return -1
        elif c == 102:
            if i + 5 <= e and buf[i + 1] == 97 and buf[i + 2] == 108 and buf[i + 3] == 115 \
                    and buf[i + 4] == 101:
                kind = V_FALSE
                i += 5
            else:
                return -1
        elif c == 110:
            if i + 4 <= e and buf[i + 1] == 117 and buf[i + 2] == 108 and buf[i + 3] == 108:
                kind = V_NULL
                i += 4
            else:
                return -1
        elif c == 45 or (48 <= c <= 57):
            neg = c == 45
            if neg:
                i += 1
            if i >= e or buf[i] < 48 or buf[i] > 57:
                return -1
            v = np.int64(0)
            if buf[i] == 48:
                i += 1
                if i < e and 48 <= buf[i] <= 57:
                    return -1
            else:
                nd = 0
                while i < e and 48 <= buf[i] <= 57:
                    v = v * 10 + (buf[i] - 48)
                    nd += 1
                    i += 1
                    if nd > 18:
                        return -1
            if i < e and (buf[i] == 46 or buf[i] == 101 or buf[i] == 69):
                return -1   # a float: let Python decide
            kind = V_INT
            a = -v if neg else v
        else:
            return -1
        if key >= 0:
            if f[key, 0] != V_ABSENT:
                return -1   # a repeated key
            f[key, 0] = kind
            f[key, 1] = a
            f[key, 2] = b
        i = _ws(buf, i, e, stream)
        if i >= e:
            return -1
        c = buf[i]
        if c == 44:
            i = _ws(buf, i + 1, e, stream)
            continue
        if c != 125:
            return -1
        i = _ws(buf, i + 1, e, stream)
        if not stream:
            return e if i == e else -1
        if i == e or buf[i] == 10:
            return i
        return -1


@njit(cache=True, nogil=True, _nrt=False)
def scan_object(buf, s, e, f, cache):
    """True when buf[s:e] is one flat JSON object the scanner is sure about (fields in f)."""
    return _scan(buf, s, e, f, cache, False) == e


@njit(cache=True, nogil=True, _nrt=False)
def _digits(buf, s, n):
    v = np.int64(0)
    for k in range(n):
        c = buf[s + k]
        if c < 48 or c > 57:
            return np.int64(-1)
        v = v * 10 + (c - 48)
    return v


@njit(cache=True, nogil=True, _nrt=False)
def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True, nogil=True, _nrt=False)
def _days_in_month(y, m):
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


@njit(cache=True, nogil=True, _nrt=False)
def _word(buf, s):
    v = np.int64(0)
    for i in range(8):
        v = (v << 8) | buf[s + i]
    return v


@njit(cache=True, nogil=True, _nrt=False)
def parse_ts_text(buf, s, e, cache):
    """Epoch ms of `YYYY-MM-DDTHH:MM:SS.fffZ` exactly as `timefmt.parse_ts`'s fast path
    accepts it, else -1 (the caller then leaves the line to Python). `cache` holds the last
    valid minute prefix (two 8-byte words) and its epoch ms."""
    if e - s != 24 or buf[s + 23] != 90 or buf[s + 10] != 84 or buf[s + 16] != 58 \
            or buf[s + 19] != 46:
        return np.int64(-1)
    sec = _digits(buf, s + 17, 2)
    frac = _digits(buf, s + 20, 3)
    if sec < 0 or frac < 0:
        return np.int64(-1)
    v = sec * 1000 + frac
    if v >= 60000:
        return np.int64(-1)
    w0 = _word(buf, s)
    w1 = _word(buf, s + 8)
    if cache[0] == 1 and cache[1] == w0 and cache[2] == w1:
        return cache[3] + v
    if buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 13] != 58:
        return np.int64(-1)
    y = _digits(buf, s, 4)
    mo = _digits(buf, s + 5, 2)
    d = _digits(buf, s + 8, 2)
    h = _digits(buf, s + 11, 2)
    mi = _digits(buf, s + 14, 2)
    if y < 1 or mo < 1 or mo > 12 or d < 1 or h < 0 or h > 23 or mi < 0 or mi > 59:
        return np.int64(-1)
    if d > _days_in_month(y, mo):
        return np.int64(-1)
    base = days_from_civil(y, mo, d) * 86_400_000 + h * 3_600_000 + mi * 60_000
    if base < _MIN_TS or base >= _MAX_TS:
        return np.int64(-1)
    cache[0] = 1
    cache[1] = w0
    cache[2] = w1
    cache[3] = base
    return base + v


@njit(cache=True, nogil=True, _nrt=False)
def _str_len_ok(f, k, limit):
    return f[k, 0] == V_STR and 0 < f[k, 2] - f[k, 1] <= limit


@njit(cache=True, nogil=True, _nrt=False)
def _optional_str_ok(f, k, limit):
    return f[k, 0] == V_ABSENT or _str_len_ok(f, k, limit)


@njit(cache=True, nogil=True, _nrt=False)
def _word_of(buf, f, k, first, count):
    """Index of the word a value is (0..count-1), or -1."""
    kind = f[k, 0]
    if kind == V_WORD:
        return f[k, 1]
    if kind == V_STR:
        for w in range(count):
            if _match(buf, f[k, 1], f[k, 2], _WORD_BYTES, _WORD_OFF, first + w):
                return w
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _event_code(buf, f):
    """Record code of a scanned object that `streams.events.validate` would accept, else -1."""
    etype = _word_of(buf, f, F_TYPE, 0, 3)
    if etype < 0:
        return -1
    if not _str_len_ok(f, F_CALL_ID, 64) or not _optional_str_ok(f, F_TRUST, 16):
        return -1
    if etype == RECEIVED:
        if f[F_TRUST, 0] != V_STR or not _optional_str_ok(f, F_ANSWERED_BY, 16):
            return -1
        code = RECEIVED
        if f[F_ANSWERED_BY, 0] == V_STR:
            a, b = f[F_ANSWERED_BY, 1], f[F_ANSWERED_BY, 2]
            ta, tb = f[F_TRUST, 1], f[F_TRUST, 2]
            differs = b - a != tb - ta
            if not differs:
                for i in range(b - a):
                    if buf[a + i] != buf[ta + i]:
                        differs = True
                        break
            if differs:
                code |= FLAG
        return code
    if etype == TRIAGED:
        disp = DISPATCH
        if f[F_DISPOSITION, 0] != V_ABSENT:
            disp = _word_of(buf, f, F_DISPOSITION, 3, 3)
            if disp < 0:
                return -1
        cat = 0
        kind = f[F_CATEGORY, 0]
        if kind == V_WORD:
            cat = f[F_CATEGORY, 1]
        elif kind == V_STR:
            s, e = f[F_CATEGORY, 1], f[F_CATEGORY, 2]
            if e - s != 2 or buf[s] != 67 or buf[s + 1] < 49 or buf[s + 1] > 52:
                return -1
            cat = buf[s + 1] - 48
        elif kind != V_ABSENT or disp == DISPATCH:
            return -1
        if not _optional_str_ok(f, F_REDIRECT_TO, 64):
            return -1
        return TRIAGED | (cat << 2) | (disp << 5)
    if not _optional_str_ok(f, F_RESOURCE_ID, 64):
        return -1
    kind = f[F_TRANSPORT, 0]
    if kind == V_ABSENT or kind == V_TRUE:
        return ARRIVED | FLAG
    if kind == V_FALSE:
        return ARRIVED
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _event_ts(buf, f, cache):
    """Event time (epoch ms) of a scanned object, or -1 where validation would refuse it."""
    kind = f[F_TS, 0]
    if kind == V_MS:
        return f[F_TS, 1]
    if kind == V_STR:
        return parse_ts_text(buf, f[F_TS, 1], f[F_TS, 2], cache)
    if kind == V_INT:
        t = f[F_TS, 1]
        return t if _MIN_TS <= t < _MAX_TS else np.int64(-1)
    return np.int64(-1)


#: the string fields an `Event` carries, in the order `scan_events` writes them
EVENT_STRINGS = np.array([F_CALL_ID, F_TRUST, F_ANSWERED_BY, F_REDIRECT_TO, F_RESOURCE_ID],
                         dtype=np.int64)


@njit(cache=True, nogil=True, _nrt=False)
def scan_events(buf, starts, ends, n, max_bytes, ts_out, code_out, text, used, f, cache):
    """Records buf[starts[i]:ends[i]], i < n, to their code and event time; code PENDING
    where the scanner is not sure. For each other record, the string fields EVENT_STRINGS
    go to `text` (empty when absent), each followed by a NUL byte (never in a string the
    scanner takes), so one decode and one split give every record's strings; `used[0]`:
    the bytes written (room: len(buf) + 5 n)."""
    k = np.int64(0)
    for i in range(n):
        s = starts[i]
        e = ends[i]
        code_out[i] = PENDING
        if e - s > max_bytes or _scan(buf, s, e, f, cache, False) != e:
            continue
        code = _event_code(buf, f)
        if code < 0:
            continue
        t = _event_ts(buf, f, cache)
        if t < 0:
            continue
        ts_out[i] = t
        code_out[i] = code
        for j in range(EVENT_STRINGS.shape[0]):
            field = EVENT_STRINGS[j]
            if f[field, 0] == V_STR:
                for b in range(f[field, 1], f[field, 2]):
                    text[k] = buf[b]
                    k += 1
            text[k] = 0
            k += 1
    used[0] = k


@njit(cache=True, nogil=True, _nrt=False)
def _fill(buf, f, cache, r, ts_out, code_out, cid_out, trust_out,
          c_table, c_span, c_arena, c_meta, c_recent,
          t_table, t_span, t_arena, t_meta, t_recent, defer, cs, ce, k):
    """Columns of record r from a scanned object; False (nothing written but PENDING) when
    validation would not accept it. With `defer`, the call id's span goes to cs/ce[k] for
    `intern_calls` instead of being interned here."""
    code = _event_code(buf, f)
    if code < 0:
        return False
    t = _event_ts(buf, f, cache)
    if t < 0:
        return False
    ts_out[r] = t
    code_out[r] = code
    if defer:
        cs[k] = f[F_CALL_ID, 1]
        ce[k] = f[F_CALL_ID, 2]
    else:
        cid_out[r] = _intern(buf, f[F_CALL_ID, 1], f[F_CALL_ID, 2], c_table, c_span, c_arena,
                             c_meta, c_recent)
    if f[F_TRUST, 0] == V_STR:
        trust_out[r] = _intern(buf, f[F_TRUST, 1], f[F_TRUST, 2], t_table, t_span, t_arena,
                               t_meta, t_recent)
    else:
        trust_out[r] = -1
    return True


@njit(cache=True, nogil=True, _nrt=False)
def parse_records(buf, starts, ends, n, rec_base, max_bytes,
                  ts_out, code_out, cid_out, trust_out,
                  c_table, c_span, c_arena, c_meta, c_recent,
                  t_table, t_span, t_arena, t_meta, t_recent, f, cache):
    """Fill the columns of records 0..n-1 given as spans (record index rec_base + i); the
    ones the scanner is not sure about get code PENDING. The interners must have room for
    n more strings of the batch's bytes; `f`, `cache` come from `scratch()`."""
    for i in range(n):
        s = starts[i]
        e = ends[i]
        r = rec_base + i
        code_out[r] = PENDING
        if e - s > max_bytes or _scan(buf, s, e, f, cache, False) != e:
            continue
        _fill(buf, f, cache, r, ts_out, code_out, cid_out, trust_out,
              c_table, c_span, c_arena, c_meta, c_recent,
              t_table, t_span, t_arena, t_meta, t_recent, False, starts, ends, i)


@njit(cache=True, nogil=True, _nrt=False)
def region_end(buf, have, final):
    """End of the complete lines in buf[:have] (just after the last line break; all of it
    at the end of the input)."""
    if final:
        return have
    i = have - 1
    while i >= 0 and buf[i] != 10:
        i -= 1
    return i + 1


@njit(cache=True, nogil=True, _nrt=False)
def parse_lines(buf, pos, end, final, max_bytes, lineno, rec_base, starts, ends, linenos,
                blanks, ts_out, code_out, cid_out, trust_out,
                c_table, c_span, c_arena, c_meta, c_recent,
                t_table, t_span, t_arena, t_meta, t_recent, f, cache, out, cs, ce):
    """Lines of buf[pos:end] (complete lines: `region_end`) to records, in one pass: each
    line is scanned as an event and its line break found on the way; lines the scanner is
    not sure about are found with a plain search and left PENDING for Python. Records get
    (start, end without the line break, line number) in starts/ends/linenos; blank lines
    (ASCII whitespace only, as `bytes.isspace`) are not records, their numbers go to
    `blanks`. Stops when starts or blanks is full. out = (records, next position, last line
    number, blank lines). Call ids are left to `intern_calls` (their spans in cs/ce)."""
    k = 0
    nb = 0
    cap = starts.shape[0]
    bcap = blanks.shape[0]
    while pos < end and k < cap and nb < bcap:
        nl = -1
        if buf[pos] == 123:
            nl = _scan(buf, pos, end, f, cache, True)
        parsed = nl >= 0
        if not parsed:
            nl = pos
            while nl < end and buf[nl] != 10:
                nl += 1
        stop = nl
        if nl < end and stop > pos and buf[stop - 1] == 13:
            stop -= 1
        lineno += 1
        nxt = nl + 1 if nl < end else end
        if not parsed:
            blank = True
            for i in range(pos, stop):
                c = buf[i]
                if not (c == 32 or (9 <= c <= 13)):
                    blank = False
                    break
            if blank:
                blanks[nb] = lineno
                nb += 1
                pos = nxt
                continue
        r = rec_base + k
        starts[k] = pos
        ends[k] = stop
        linenos[k] = lineno
        k += 1
        code_out[r] = PENDING
        if parsed and stop - pos <= max_bytes:
            _fill(buf, f, cache, r, ts_out, code_out, cid_out, trust_out,
                  c_table, c_span, c_arena, c_meta, c_recent,
                  t_table, t_span, t_arena, t_meta, t_recent, True, cs, ce, k - 1)
        pos = nxt
    out[0] = k
    out[1] = pos
    out[2] = lineno
    out[3] = nb


@njit(cache=True, nogil=True, _nrt=False)
def intern_calls(buf, cs, ce, k, rec_base, code_out, cid_out, table, span, arena, meta, recent,
                 hs, todo):
    """Call ids of the k records parse_lines left (spans cs/ce). Most ids were seen minutes
    before and come from the `recent` cache; for the others the table slots of a group of
    64 are read first, all at once, so their cache misses overlap instead of queueing
    (hs, todo: scratch of 64)."""
    mask = np.uint64(table.shape[0] - 1)
    rmask = np.uint64(recent.shape[0] - 1)
    warm = np.int64(0)
    i = 0
    while i < k:
        j = min(i + 64, k)
        for q in range(i, j):
            todo[q - i] = False
            if code_out[rec_base + q] == PENDING:
                continue
            s = cs[q]
            e = ce[q]
            h = _hash(buf, s, e)
            tag = np.int64(h >> np.uint64(33))
            v = recent[np.int64((h >> np.uint64(13)) & rmask)]
            if v >= 0 and (v >> 32) == tag and _same(buf, s, e - s, span, arena,
                                                     v & 0xFFFFFFFF):
                cid_out[rec_base + q] = v & 0xFFFFFFFF
                continue
            hs[q - i] = h
            todo[q - i] = True
            warm ^= table[np.int64(h & mask)]
        for q in range(i, j):
            if not todo[q - i]:
                continue
            h = hs[q - i]
            tag = np.int64(h >> np.uint64(33))
            idx = _lookup(buf, cs[q], ce[q], h, tag, table, span, arena, meta)
            recent[np.int64((h >> np.uint64(13)) & rmask)] = (tag << 32) | idx
            cid_out[rec_base + q] = idx
        i = j
    return warm      # returned so the warming reads are not optimised away
