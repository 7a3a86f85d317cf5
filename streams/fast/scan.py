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

    def __init__(self, ids: int = 1 << 12, arena: int = 1 << 16) -> None:
        self.table = np.full(_pow2(ids * 2), -1, dtype=np.int64)
        self.span = np.zeros(ids, dtype=np.int64)      # arena start << 16 | length
        self.arena = np.zeros(arena, dtype=np.uint8)
        self.meta = np.zeros(2, dtype=np.int64)        # ids used, arena bytes used

    def __len__(self) -> int:
        return int(self.meta[0])

    def arrays(self):
        return self.table, self.span, self.arena, self.meta

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
        return int(_intern(np.frombuffer(data, dtype=np.uint8), 0, len(data), *self.arrays()))

    def release_table(self) -> None:
        """Drop the lookup table once no more strings come (ids and bytes stay)."""
        self.table = np.full(2, -1, dtype=np.int64)

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
def _intern(buf, s, e, table, span, arena, meta):
    """Id of buf[s:e]; the caller has reserved room."""
    h = _hash(buf, s, e)
    tag = np.int64(h >> np.uint64(33))   # 31 bits: entries stay non-negative
    mask = table.shape[0] - 1
    j = np.int64(h & np.uint64(mask))
    n = e - s
    while True:
        v = table[j]
        if v < 0:
            break
        if (v >> 32) == tag:
            k = v & 0xFFFFFFFF
            sp = span[k]
            if (sp & 0xFFFF) == n:
                a = sp >> 16
                same = True
                for i in range(n):
                    if arena[a + i] != buf[s + i]:
                        same = False
                        break
                if same:
                    return k
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


# -- lines --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, _nrt=False)
def split_lines(buf, pos, n, final, starts, ends, linenos, lineno, blanks):
    """Records of buf[pos:n]: (start, end) without the line break ("\\n" or "\\r\\n") and
    the 1-based line number; blank lines (only ASCII whitespace, as `bytes.isspace`) are not
    records but their numbers are kept. Stops before an unterminated last line unless
    `final`, or when `starts` or `blanks` is full. Returns (records, next position, last
    line number, blank lines found)."""
    k = 0
    nb = 0
    cap = starts.shape[0]
    bcap = blanks.shape[0]
    while pos < n and k < cap and nb < bcap:
        nl = pos
        while nl < n and buf[nl] != 10:
            nl += 1
        if nl == n and not final:
            break
        end = nl
        if nl < n and end > pos and buf[end - 1] == 13:
            end -= 1
        lineno += 1
        blank = True
        for i in range(pos, end):
            c = buf[i]
            if not (c == 32 or (9 <= c <= 13)):
                blank = False
                break
        if blank:
            blanks[nb] = lineno
            nb += 1
        else:
            starts[k] = pos
            ends[k] = end
            linenos[k] = lineno
            k += 1
        pos = nl + 1 if nl < n else n
    return k, pos, lineno, nb


def scratch():
    """Scratch arrays for `parse_records` (allocated by the caller: the kernels run without
    Numba's reference counting, which would otherwise cost more than the parsing)."""
    return np.zeros((_NKEYS, 3), dtype=np.int64), np.zeros(4, dtype=np.int64)


# -- JSON objects -------------------------------------------------------------------------
@njit(cache=True, nogil=True, _nrt=False)
def _ws(buf, i, e):
    while i < e:
        c = buf[i]
        if c == 32 or c == 9 or c == 10 or c == 13:
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
def _key_index(buf, s, e):
    n = e - s
    if n == 2:
        k = F_TS
    elif n == 4:
        k = F_TYPE
    elif n == 5:
        k = F_TRUST
    elif n == 7:
        k = F_CALL_ID
    elif n == 8:
        k = F_CATEGORY
    elif n == 11:
        c = buf[s]
        if c == 97:
            k = F_ANSWERED_BY
        elif c == 100:
            k = F_DISPOSITION
        elif c == 114:
            k = F_REDIRECT_TO if buf[s + 2] == 100 else F_RESOURCE_ID
        else:
            return -1
    elif n == 17:
        k = F_TRANSPORT
    else:
        return -1
    return k if _match(buf, s, e, _KEY_BYTES, _KEY_OFF, k) else -1


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
def scan_object(buf, s, e, f):
    """Parse buf[s:e] as one flat JSON object; f[k] = (kind, a, b) for each known key
    (a string's span, or an integer's value in a). False means "not sure": decode in Python."""
    for k in range(_NKEYS):
        f[k, 0] = V_ABSENT
    i = s
    if i >= e or buf[i] != 123:
        return False
    i = _ws(buf, i + 1, e)
    if i >= e or buf[i] == 125:
        return False
    while True:
        if i >= e or buf[i] != 34:
            return False
        ks = i + 1
        ke = _string_end(buf, ks, e)
        if ke < 0:
            return False
        key = _key_index(buf, ks, ke)
        i = _ws(buf, ke + 1, e)
        if i >= e or buf[i] != 58:
            return False
        i = _ws(buf, i + 1, e)
        if i >= e:
            return False
        c = buf[i]
        a = np.int64(0)
        b = np.int64(0)
        if c == 34:
            ve = _string_end(buf, i + 1, e)
            if ve < 0:
                return False
            kind = V_STR
            a = i + 1
            b = ve
            i = ve + 1
        elif c == 116:
            if i + 4 <= e and buf[i + 1] == 114 and buf[i + 2] == 117 and buf[i + 3] == 101:
                kind = V_TRUE
                i += 4
            else:
                return False
        elif c == 102:
            if i + 5 <= e and buf[i + 1] == 97 and buf[i + 2] == 108 and buf[i + 3] == 115 \
                    and buf[i + 4] == 101:
                kind = V_FALSE
                i += 5
            else:
                return False
        elif c == 110:
            if i + 4 <= e and buf[i + 1] == 117 and buf[i + 2] == 108 and buf[i + 3] == 108:
                kind = V_NULL
                i += 4
            else:
                return False
        elif c == 45 or (48 <= c <= 57):
            neg = c == 45
            if neg:
                i += 1
            if i >= e or buf[i] < 48 or buf[i] > 57:
                return False
            v = np.int64(0)
            if buf[i] == 48:
                i += 1
                if i < e and 48 <= buf[i] <= 57:
                    return False
            else:
                nd = 0
                while i < e and 48 <= buf[i] <= 57:
                    v = v * 10 + (buf[i] - 48)
                    nd += 1
                    i += 1
                    if nd > 18:
                        return False
            if i < e and (buf[i] == 46 or buf[i] == 101 or buf[i] == 69):
                return False   # a float: let Python decide
            kind = V_INT
            a = -v if neg else v
        else:
            return False
        if key >= 0:
            if f[key, 0] != V_ABSENT:
                return False   # a repeated key
            f[key, 0] = kind
            f[key, 1] = a
            f[key, 2] = b
        i = _ws(buf, i, e)
        if i >= e:
            return False
        c = buf[i]
        if c == 44:
            i = _ws(buf, i + 1, e)
            continue
        if c == 125:
            return _ws(buf, i + 1, e) == e
        return False


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
def _event_code(buf, f):
    """Record code of a scanned object that `streams.events.validate` would accept, else -1."""
    if f[F_TYPE, 0] != V_STR:
        return -1
    s, e = f[F_TYPE, 1], f[F_TYPE, 2]
    if _match(buf, s, e, _WORD_BYTES, _WORD_OFF, 0):
        etype = RECEIVED
    elif _match(buf, s, e, _WORD_BYTES, _WORD_OFF, 1):
        etype = TRIAGED
    elif _match(buf, s, e, _WORD_BYTES, _WORD_OFF, 2):
        etype = ARRIVED
    else:
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
        kind = f[F_DISPOSITION, 0]
        if kind == V_STR:
            s, e = f[F_DISPOSITION, 1], f[F_DISPOSITION, 2]
            if _match(buf, s, e, _WORD_BYTES, _WORD_OFF, 3):
                disp = DISPATCH
            elif _match(buf, s, e, _WORD_BYTES, _WORD_OFF, 4):
                disp = HEAR_AND_TREAT
            elif _match(buf, s, e, _WORD_BYTES, _WORD_OFF, 5):
                disp = REDIRECT
            else:
                return -1
        elif kind != V_ABSENT:
            return -1
        cat = 0
        kind = f[F_CATEGORY, 0]
        if kind == V_STR:
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
def parse_records(buf, starts, ends, n, rec_base, max_bytes,
                  ts_out, code_out, cid_out, trust_out,
                  c_table, c_span, c_arena, c_meta, t_table, t_span, t_arena, t_meta,
                  f, cache):
    """Fill the columns of records 0..n-1 of a batch (record index rec_base + i); lines the
    scanner is not sure about get code PENDING. The interners must have room for n more
    strings of the batch's bytes. `f` (fields) and `cache` (timestamp minute) are scratch
    arrays from `scratch()`."""
    for i in range(n):
        s = starts[i]
        e = ends[i]
        r = rec_base + i
        code_out[r] = PENDING
        if e - s > max_bytes or not scan_object(buf, s, e, f):
            continue
        code = _event_code(buf, f)
        if code < 0:
            continue
        kind = f[F_TS, 0]
        if kind == V_STR:
            t = parse_ts_text(buf, f[F_TS, 1], f[F_TS, 2], cache)
            if t < 0:
                continue
        elif kind == V_INT:
            t = f[F_TS, 1]
            if t < _MIN_TS or t >= _MAX_TS:
                continue
        else:
            continue
        ts_out[r] = t
        code_out[r] = code
        cid_out[r] = _intern(buf, f[F_CALL_ID, 1], f[F_CALL_ID, 2], c_table, c_span, c_arena,
                             c_meta)
        if f[F_TRUST, 0] == V_STR:
            trust_out[r] = _intern(buf, f[F_TRUST, 1], f[F_TRUST, 2], t_table, t_span, t_arena,
                                   t_meta)
        else:
            trust_out[r] = -1
