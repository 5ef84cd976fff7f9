"""The operator audit trail: who did what, when, from where, with which
parameters, and what came back (issue 16 item 5, CloudTrail-like).

Every record is hash-chained: hash = SHA-256(prev_hash || canonical JSON of
seq, at, who, source, action, params, result). Sequence numbers have no gaps
and the anchor row (audit_anchor) holds both ends of the chain, so `verify`
detects an altered record (its hash), a removed one in the middle (a seq gap
and a broken prev_hash link), and one removed at either end (the anchor's
start or head no longer matches). What a hash chain cannot stop: someone
with write access to the database rewriting every hash after a change, anchor
included. Against that, export the trail (JSON lines) or at least note
`verify`'s head hash somewhere the database's writers cannot reach.

Parameters are stored with secrets redacted: any key that looks like a
password, code, token, secret or key becomes "[redacted]".

The web and API layers call `record` at their boundary (ictl/service/web/app.py);
the actions in store/rollout/fleetops do not audit themselves.
"""
import hashlib
import json
import threading
import time

from ictl.service import db as dbmod

ZERO = "0" * 64
REDACTED = "[redacted]"
_SECRET_WORDS = ("password", "passwd", "secret", "token", "code", "otp", "key", "csrf",
                 "cookie", "authorization", "session")
_MAX_VALUE = 2048        # characters of one parameter kept (uploads are summarised)
_MAX_DEPTH = 4
_LOCK = threading.Lock()  # one writer per process; the anchor's CAS serialises processes


class AuditError(Exception):
    """The audit trail cannot be written or read."""


def _secret_key(key):
    k = str(key).lower()
    return any(w in k for w in _SECRET_WORDS)


def redact(value, depth=0):
    """A JSON-safe copy of `value` with secrets replaced and sizes bounded."""
    if depth > _MAX_DEPTH:
        return "[nested]"
    if isinstance(value, dict):
        return {str(k): (REDACTED if _secret_key(k) else redact(v, depth + 1))
                for k, v in list(value.items())[:64]}
    if isinstance(value, (list, tuple)):
        return [redact(v, depth + 1) for v in list(value)[:64]]
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        return {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    s = str(value)
    return s if len(s) <= _MAX_VALUE else s[:_MAX_VALUE] + "...[%d chars]" % len(s)


def _canonical(rec):
    return json.dumps({k: rec[k] for k in ("seq", "at", "who", "source", "action", "params", "result")},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def chain_hash(prev_hash, rec):
    """The hash of record `rec` (a dict with params/result as JSON text)."""
    return hashlib.sha256((prev_hash + "\n" + _canonical(rec)).encode()).hexdigest()


def record(db, who, source, action, params=None, result=None):
    """Append one record; returns its seq. Raises AuditError when it cannot
    be written (the caller must then fail the request: no unaudited action)."""
    who = str(who or "-")[:200]
    source = str(source or "-")[:200]
    action = str(action)[:200]
    p = json.dumps(redact(params or {}), sort_keys=True, separators=(",", ":"))
    r = json.dumps(redact(result or {}), sort_keys=True, separators=(",", ":"))
    with _LOCK:
        for _ in range(50):
            try:
                with db.transaction():
                    head = db.one("SELECT head_seq, head_hash FROM audit_anchor WHERE id = 1")
                    if head is None:
                        raise AuditError("audit_anchor row missing: run the migrations")
                    rec = {"seq": int(head["head_seq"]) + 1, "at": round(time.time(), 6),
                           "who": who, "source": source, "action": action, "params": p, "result": r}
                    h = chain_hash(head["head_hash"], rec)
                    db.execute("INSERT INTO audit_log (seq, at, who, source, action, params, result,"
                               " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (rec["seq"], rec["at"], who, source, action, p, r, head["head_hash"], h))
                    n = db.execute("UPDATE audit_anchor SET head_seq = ?, head_hash = ?"
                                   " WHERE id = 1 AND head_seq = ?", (rec["seq"], h, head["head_seq"]))
                    if n != 1:
                        raise _Retry()
                return rec["seq"]
            except (_Retry,) + dbmod.IntegrityError:
                time.sleep(0.005)
    raise AuditError("audit trail busy: could not append after 50 tries")


class _Retry(Exception):
    pass


def entries(db, limit=100, offset=0, who=None, action=None):
    """Newest first, for the audit page; params/result decoded."""
    sql, args = "SELECT * FROM audit_log WHERE 1 = 1", []
    if who:
        sql += " AND who = ?"
        args.append(who)
    if action:
        sql += " AND action = ?"
        args.append(action)
    sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
    args += [max(1, min(int(limit), 1000)), max(0, int(offset))]
    return [_decoded(r) for r in db.query(sql, args)]


def _decoded(row):
    out = dict(row)
    for k in ("params", "result"):
        try:
            out[k] = json.loads(out[k])
        except (TypeError, ValueError):
            pass
    return out


def _rows(db, batch=5000):
    last = -1
    while True:
        rows = db.query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch))
        if not rows:
            return
        yield from rows
        last = rows[-1]["seq"]


def verify(db):
    """Walk the whole chain. Returns {"ok", "count", "head_seq", "head_hash",
    "problems": [...]} where each problem names the seq and what is wrong."""
    anchor = db.one("SELECT * FROM audit_anchor WHERE id = 1")
    problems = []
    if anchor is None:
        return {"ok": False, "count": 0, "head_seq": None, "head_hash": None,
                "problems": ["the audit_anchor row is missing"]}
    expect_seq, prev = int(anchor["start_seq"]) + 1, anchor["start_hash"]
    count = 0
    for row in _rows(db):
        count += 1
        seq = int(row["seq"])
        if seq != expect_seq:
            problems.append("seq %d: expected seq %d (records missing)" % (seq, expect_seq))
        if row["prev_hash"] != prev:
            problems.append("seq %d: prev_hash does not match the record before it" % seq)
        rec = dict(row)
        rec["seq"], rec["at"] = seq, float(row["at"])
        if chain_hash(row["prev_hash"], rec) != row["hash"]:
            problems.append("seq %d: content does not match its hash (altered)" % seq)
        prev, expect_seq = row["hash"], seq + 1
    if int(anchor["head_seq"]) != expect_seq - 1 or anchor["head_hash"] != prev:
        problems.append("head: the anchor says seq %d, the chain ends at seq %d (records removed or added at the end)"
                        % (int(anchor["head_seq"]), expect_seq - 1))
    return {"ok": not problems, "count": count, "head_seq": int(anchor["head_seq"]),
            "head_hash": anchor["head_hash"], "problems": problems}


def export_jsonl(db, out):
    """Write every record as one JSON object per line to the text stream `out`;
    returns the number written. Hashes included, so an export can be
    verified on its own (verify_jsonl)."""
    n = 0
    for row in _rows(db):
        out.write(json.dumps(_decoded(row), sort_keys=True) + "\n")
        n += 1
    return n


def verify_jsonl(lines, start_hash=ZERO):
    """Check an export: returns a list of problems (empty = intact)."""
    problems, prev, expect = [], start_hash, None
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            rec["params"] = json.dumps(rec["params"], sort_keys=True, separators=(",", ":"))
            rec["result"] = json.dumps(rec["result"], sort_keys=True, separators=(",", ":"))
        except (ValueError, KeyError, TypeError):
            problems.append("line %d: not an audit record" % i)
            continue
        if expect is not None and rec["seq"] != expect:
            problems.append("line %d: expected seq %d, found %s" % (i, expect, rec["seq"]))
        if rec.get("prev_hash") != prev or chain_hash(prev, rec) != rec.get("hash"):
            problems.append("line %d (seq %s): hash chain broken" % (i, rec["seq"]))
        prev, expect = rec.get("hash"), rec["seq"] + 1
    return problems


def prune(db, before):
    """Retention: delete records older than `before` (Unix seconds) and move
    the chain's start anchor to the last one deleted, in one transaction, so
    the remaining chain still verifies. Returns the number deleted."""
    with db.transaction():
        last = db.one("SELECT seq, hash FROM audit_log WHERE at < ? ORDER BY seq DESC LIMIT 1", (before,))
        if last is None:
            return 0
        n = db.execute("DELETE FROM audit_log WHERE seq <= ?", (last["seq"],))
        db.execute("UPDATE audit_anchor SET start_seq = ?, start_hash = ? WHERE id = 1",
                   (last["seq"], last["hash"]))
    return n
