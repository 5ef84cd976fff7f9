# Security event log: a bounded, hash-chained ring of fixed-size records on the
# device's filesystem, kept for the agent to send to the events topic.
#
#   from ironclad import events
#   events.record("boot", "bad_signature", detail="slot a")
#
# Record (RECORD_SIZE bytes, little-endian), format written down in
# docs/events.md:
#   0  2s magic b"EV"        2  B  format version (1)   3  B outcome code
#   4  I  seq (from 1, never reused)
#   8  I  ms since this boot (time.ticks_ms)
#   12 I  wall time, Unix seconds (0 = not known)
#   16 B  len(kind)  B len(reason)  B len(detail)  then the three ASCII strings,
#         zero padded up to offset 96
#   96  16s prev: the hash of the record before (16 zero bytes for seq 1)
#   112 16s hash: SHA-256(prev || bytes 0..95)[:16]
# Removing or altering a record breaks the chain (prev of the next no longer
# matches); the fleet console keeps the last hash it saw, so rewriting the whole
# ring is caught too.
#
# Each record is written in place with one write of a whole slot; littlefs
# keeps the old contents until the file is closed, so a power cut leaves either
# the old record or the new one. On open the ring is scanned for the highest
# seq whose hash checks.
import hashlib
import struct
import time

RECORD_SIZE = 128
SLOTS = 64
PATH = "/ironclad/events.bin"
SENT_PATH = "/ironclad/events.sent"

OUTCOMES = ("info", "rejected", "failed", "ok")
MAX_KIND = 15
MAX_REASON = 23
MAX_DETAIL = 96 - 19 - MAX_KIND - MAX_REASON  # 39

_ZERO = bytes(16)
_head = None  # (seq, hash) of the newest record, once scanned


def _wall():
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:  # MicroPython's embedded epoch
        t += 946684800
    return t if t > 1735689600 else 0  # before 2025: the clock was never set


def _ascii(s, n):
    b = s.encode() if isinstance(s, str) else bytes(s)
    b = bytes(c if 32 <= c < 127 else 63 for c in b[:n])
    return b


def encode(seq, kind, reason, outcome, detail, prev, ms=None, wall=None):
    k = _ascii(kind, MAX_KIND)
    r = _ascii(reason, MAX_REASON)
    d = _ascii(detail, MAX_DETAIL)
    try:
        oc = OUTCOMES.index(outcome)
    except ValueError:
        raise ValueError("unknown outcome")
    body = bytearray(96)
    struct.pack_into("<2sBBIIIBBB", body, 0, b"EV", 1, oc, seq,
                     (time.ticks_ms() if ms is None else ms) & 0xFFFFFFFF,
                     _wall() if wall is None else wall, len(k), len(r), len(d))
    o = 19
    for part in (k, r, d):
        body[o:o + len(part)] = part
        o += len(part)
    h = hashlib.sha256(prev)
    h.update(body)
    return bytes(body) + prev + h.digest()[:16]


def decode(rec):
    """A record's fields as a dict, or None when it is blank or does not hash."""
    if len(rec) != RECORD_SIZE or rec[:3] != b"EV\x01":
        return None
    h = hashlib.sha256(rec[96:112])
    h.update(rec[:96])
    if h.digest()[:16] != rec[112:]:
        return None
    oc, seq, ms, wall, lk, lr, ld = struct.unpack_from("<BIIIBBB", rec, 3)
    if oc >= len(OUTCOMES) or lk > MAX_KIND or lr > MAX_REASON or ld > MAX_DETAIL or seq == 0:
        return None
    o = 19
    k = rec[o:o + lk].decode()
    r = rec[o + lk:o + lk + lr].decode()
    d = rec[o + lk + lr:o + lk + lr + ld].decode()
    return {"seq": seq, "kind": k, "reason": r, "outcome": OUTCOMES[oc], "detail": d,
            "ms": ms, "wall": wall, "prev": rec[96:112], "hash": rec[112:]}


def _open(mode):
    return open(PATH, mode)


def _ensure_dir():
    import os

    try:
        os.mkdir(PATH.rsplit("/", 1)[0])
    except OSError:
        pass


def _scan():
    global _head
    best = (0, _ZERO)
    try:
        f = _open("rb")
    except OSError:
        _head = best
        return best
    buf = bytearray(RECORD_SIZE)
    with f:
        while f.readinto(buf) == RECORD_SIZE:
            r = decode(buf)
            if r and r["seq"] > best[0]:
                best = (r["seq"], r["hash"])
    _head = best
    return best


def head():
    """(seq, hash) of the newest record; (0, zeros) for an empty log."""
    return _head or _scan()


def record(kind, reason, outcome="rejected", detail=""):
    """Append a security event; returns its seq (0 if it could not be stored,
    which never stops the caller: the event is printed either way)."""
    global _head
    try:
        print("ironclad: event %s %s %s %s" % (_ascii(kind, MAX_KIND).decode(), outcome,
                                               _ascii(reason, MAX_REASON).decode(), _ascii(detail, MAX_DETAIL).decode()))
        seq, prev = head()
        seq += 1
        rec = encode(seq, kind, reason, outcome, detail, prev)
        _ensure_dir()
        try:
            f = _open("r+b")
        except OSError:
            f = _open("wb")
        with f:
            f.seek(((seq - 1) % SLOTS) * RECORD_SIZE)
            f.write(rec)
        _head = (seq, rec[112:])
        return seq
    except Exception as e:  # the log must never stop a boot or an update
        print("ironclad: event not stored:", e)
        return 0


def raw_since(seq):
    """Stored records newer than seq, oldest first, as raw bytes (what the agent
    sends: the console re-checks the chain from them)."""
    out = []
    try:
        f = _open("rb")
    except OSError:
        return out
    buf = bytearray(RECORD_SIZE)
    with f:
        while f.readinto(buf) == RECORD_SIZE:
            r = decode(buf)
            if r and r["seq"] > seq:
                out.append((r["seq"], bytes(buf)))
    out.sort(key=lambda x: x[0])
    return [b for _, b in out]


def since(seq):
    return [decode(b) for b in raw_since(seq)]


def sent():
    """The highest seq the broker has acknowledged."""
    try:
        with open(SENT_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def mark_sent(seq):
    _ensure_dir()
    with open(SENT_PATH, "w") as f:
        f.write(str(seq))


def verify_chain(records):
    """Check that decoded records (oldest first) form one unbroken chain.
    Returns None, or a reason string for the first break."""
    prev = None
    for r in records:
        if r is None:
            return "record does not hash"
        if prev is not None and (r["seq"] != prev["seq"] + 1 or r["prev"] != prev["hash"]):
            return "chain broken before seq %d" % r["seq"]
        prev = r
    return None


def _reset_cache():
    global _head
    _head = None
