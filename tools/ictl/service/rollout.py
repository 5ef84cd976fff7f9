"""Staged rollouts: an update made by `ictl update create`, uploaded (a tar
of its output directory), rolled out in groups.

    r = create(db, tar_bytes, {"devices": [...]} | {"filter": "sim-"} |
               {"percentage": 25}, params, by="alice")
    approve(db, r["id"], by="bob")          # when params["approvals"] = 1
    start(db, r["id"], by="alice")
    Engine(db_url, broker settings).start() # runs the groups (in `ictl serve`)

Groups (hawkBit's deployment groups, AWS IoT Jobs' rollout rates): a canary
group of params["canary"] devices first, then groups growing at a
constant size (rate "constant", params["group_size"]) or by a factor (rate
"exponential", params["factor"]). A group starts only when the previous one
reached params["success_threshold"] (fraction of its devices in a success
state: params["until"], default confirmed). The rollout stops itself
(state "stopped") as soon as the failures (rejected, rolled back, timed out
after params["group_timeout_s"]) pass params["failure_threshold"] of the
devices offered so far, once at least params["min_devices"] were offered
(AWS IoT Jobs' abort config: a failure percentage after a minimum number of
things). Pause stops the next group from starting (devices already offered
finish: an offered update cannot be recalled); cancel also marks the
devices not yet offered "cancelled". Two-person rule: params["approvals"]
= 1 needs an approval by another operator before start.

Publishing uses ictl.update.Rollout (the machinery of `ictl update
publish`): metadata offered, chunk windows served, base mismatch falls back
to the full update.

Every action takes `by` (the operator) and returns a result dict; none
audits itself (the web tier does)."""
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
import time

import cbor2

from ictl import ToolError, pki
from ictl import update as upd
from ictl.service import db as service_db
from ictl.service.periodic import Periodic

MAX_UPLOAD = 32 * 1024 * 1024
STATES = ("awaiting_approval", "ready", "running", "paused", "stopped", "cancelled", "done")
FINAL_ROLLOUT = ("stopped", "cancelled", "done")
FAILED = ("rejected", "rolled_back", "timed_out")
UNTIL = {"applied": ("applied", "trial", "confirmed"), "trial": ("trial", "confirmed"), "confirmed": ("confirmed",)}
DEFAULTS = {"canary": 1, "rate": "exponential", "factor": 2, "group_size": 5, "success_threshold": 1.0,
            "failure_threshold": 0.2, "min_devices": 1, "group_timeout_s": 900, "until": "confirmed",
            "approvals": 0, "name": None}


class RolloutError(ToolError):
    """A refused rollout action: the message says why; nothing changed."""


# ---------------------------------------------------------------- the upload

def _safe_members(tf):
    for m in tf.getmembers():
        name = m.name.lstrip("./") if m.name.startswith("./") else m.name
        parts = name.split("/")
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise RolloutError("update archive: member %r is not a plain file inside it" % m.name[:80])
        if parts[0] not in ("delta", "full", "."):
            raise RolloutError("update archive: unexpected %r (expected delta/ and full/ from `ictl update create`)"
                               % m.name[:80])
        yield m


def unpack(archive, dest):
    """Extract an uploaded update (tar, optionally gzip) into dest and check
    it; returns {"full": (Update, metas), "delta": ...}. RolloutError when
    it is not an update made by `ictl update create`."""
    if not isinstance(archive, (bytes, bytearray)) or not archive:
        raise RolloutError("update: empty upload")
    if len(archive) > MAX_UPLOAD:
        raise RolloutError("update: %d bytes, more than the %d accepted" % (len(archive), MAX_UPLOAD))
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(archive)), mode="r:*") as tf:
            members = list(_safe_members(tf))
            total = sum(m.size for m in members)
            if total > 4 * MAX_UPLOAD:
                raise RolloutError("update archive unpacks to %d bytes: refused" % total)
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise RolloutError("update: not a tar archive of `ictl update create` output (%s)" % e) from None
    parts = {}
    for name in ("delta", "full"):
        d = os.path.join(dest, name)
        if os.path.isdir(d):
            try:
                parts[name] = upd.Update.load(d)
            except ToolError as e:
                raise RolloutError("update %s/: %s" % (name, e)) from None
            _check(name, *parts[name])
    if "full" not in parts:
        raise RolloutError("update: no full/ update in the archive (`ictl update create` always writes one)")
    return parts


def _check(name, u, metas):
    f = u.fields
    need = ("v", "id", "target", "hwid", "ver", "ctr", "iat", "exp", "base", "patch", "result", "chunk", "n")
    if not isinstance(f, dict) or any(k not in f for k in need) or not isinstance(f["id"], bytes):
        raise RolloutError("update %s/: fields.cbor is not an update manifest" % name)
    if f["v"] != upd.FORMAT or f["n"] != u.n or u.n == 0:
        raise RolloutError("update %s/: format %r, %d chunks where the manifest says %r" % (name, f["v"], u.n, f["n"]))
    if any(len(c) > upd.CHUNK + upd.TAG for c in u._chunks):
        raise RolloutError("update %s/: a chunk is larger than %d bytes" % (name, upd.CHUNK + upd.TAG))
    if f["exp"] < time.time():
        raise RolloutError("update %s/: expired (its metadata expiry has passed): create it again" % name)
    if not metas:
        raise RolloutError("update %s/: no device metadata" % name)
    for dev, msg in metas.items():
        try:
            pki.validate_device_id(dev)
            tag = cbor2.loads(msg[1:]) if msg[:1] == b"M" else None
            payload = cbor2.loads(tag.value[2]) if isinstance(tag, cbor2.CBORTag) and tag.tag == 18 else None
        except (ToolError, cbor2.CBORDecodeError, ValueError, TypeError, IndexError, AttributeError):
            payload = None
        if not isinstance(payload, dict) or payload.get("id") != f["id"] or payload.get("dev") != dev:
            raise RolloutError("update %s/: the metadata for %r is not a signed message for this update" % (name, dev))


def _unpacked(db, rollout_id, cache_dir):
    """The rollout's update, unpacked once per process under cache_dir."""
    d = os.path.join(cache_dir, "rollout-%d" % rollout_id)
    if not os.path.isdir(d):
        row = db.one("SELECT update_archive FROM rollouts WHERE id = ?", (rollout_id,))
        tmp = tempfile.mkdtemp(dir=cache_dir)
        unpack(bytes(row["update_archive"]), tmp)
        os.replace(tmp, d)
    return {n: upd.Update.load(os.path.join(d, n)) for n in ("delta", "full") if os.path.isdir(os.path.join(d, n))}


# ---------------------------------------------------------------- planning

def _params(params):
    p = dict(DEFAULTS)
    for k, v in (params or {}).items():
        if k not in DEFAULTS:
            raise RolloutError("unknown rollout parameter %r (have: %s)" % (k, ", ".join(sorted(DEFAULTS))))
        p[k] = v
    try:
        for k in ("canary", "group_size", "min_devices", "approvals"):
            p[k] = int(p[k])
        for k in ("factor", "success_threshold", "failure_threshold", "group_timeout_s"):
            p[k] = float(p[k])
    except (TypeError, ValueError):
        raise RolloutError("rollout parameters: numbers expected (%s)" % ", ".join(sorted(DEFAULTS))) from None
    checks = ((p["canary"] >= 1, "canary: at least 1 device"),
              (p["rate"] in ("constant", "exponential"), "rate: constant or exponential"),
              (p["group_size"] >= 1, "group_size: at least 1"),
              (1.0 < p["factor"] <= 10, "factor: above 1, at most 10"),
              (0 < p["success_threshold"] <= 1, "success_threshold: a fraction in (0, 1]"),
              (0 <= p["failure_threshold"] < 1, "failure_threshold: a fraction in [0, 1)"),
              (p["min_devices"] >= 1, "min_devices: at least 1"),
              (5 <= p["group_timeout_s"] <= 7 * 86400, "group_timeout_s: 5 s to 7 days"),
              (p["until"] in UNTIL, "until: applied, trial or confirmed"),
              (p["approvals"] in (0, 1), "approvals: 0 or 1 (two-person rule)"))
    for ok, why in checks:
        if not ok:
            raise RolloutError("rollout parameter " + why)
    if p["name"] is not None:
        p["name"] = str(p["name"])[:100]
    return p


def groups_for(n, p):
    """Group sizes for n devices: canary, then constant or exponential."""
    sizes, left = [], n
    size = min(p["canary"], n)
    while left > 0:
        size = min(size, left)
        sizes.append(size)
        left -= size
        size = p["group_size"] if p["rate"] == "constant" else max(size + 1, int(math.ceil(size * p["factor"])))
    return sizes


def _targets(db, targets, available, salt):
    """Resolve the target choice to device ids (sorted, or shuffled by a
    salt-keyed hash for a percentage). Only devices the update has metadata for."""
    if not isinstance(targets, dict) or len(targets) != 1:
        raise RolloutError("targets: give one of devices (a list), filter (text) or percentage (1-100)")
    (how, val), = targets.items()
    if how == "devices":
        if not isinstance(val, (list, tuple)) or not val or not all(isinstance(v, str) for v in val):
            raise RolloutError("targets: a non-empty list of device ids")
        ids = list(dict.fromkeys(v.strip() for v in val if v.strip()))
        missing = [d for d in ids if d not in available]
        if missing:
            raise RolloutError("the update has no metadata for %s: create it for those devices too"
                               % ", ".join(sorted(missing)[:10]))
        return ids
    known = [r["device_id"] for r in db.query("SELECT device_id FROM devices ORDER BY device_id")]
    if how == "filter":
        q = str(val or "")
        ids = [d for d in known if q in d and d in available]
    elif how == "percentage":
        try:
            pct = float(val)
        except (TypeError, ValueError):
            pct = -1
        if not 0 < pct <= 100:
            raise RolloutError("targets: percentage between 1 and 100")
        pool = sorted((d for d in known if d in available), key=lambda d: hashlib.sha256((salt + d).encode()).digest())
        ids = pool[:int(math.ceil(len(pool) * pct / 100.0))]
    else:
        raise RolloutError("targets: unknown kind %r (devices, filter, percentage)" % how)
    if not ids:
        raise RolloutError("targets: no known device with metadata in this update matches")
    return ids


def _get(db, rollout_id, lock=False):
    try:
        rid = int(rollout_id)
    except (TypeError, ValueError):
        raise RolloutError("no rollout %r" % (rollout_id,)) from None
    r = db.one("SELECT id, state, created_by, approvals_needed, params FROM rollouts WHERE id = ?"
               + (" FOR UPDATE" if lock and db.engine == "postgresql" else ""), (rid,))
    if r is None:
        raise RolloutError("no rollout %d" % rid)
    return r


def _timeline(db, rollout_id, state, device_id=None, pct=None, reason=None, now=None):
    db.execute("INSERT INTO rollout_timeline (rollout_id, t, device_id, state, pct, reason) VALUES (?, ?, ?, ?, ?, ?)",
               (rollout_id, now or time.time(), device_id, state, pct, reason))


# ---------------------------------------------------------------- actions

def create(db, update_bytes, targets, params, by):
    """Check the upload, resolve the targets, plan the groups. Returns
    {"ok": True, "id", "devices", "groups": [sizes], "state"}; RolloutError
    (nothing stored) for a malformed update or bad parameters."""
    p = _params(params)
    with tempfile.TemporaryDirectory() as tmp:
        parts = unpack(update_bytes, tmp)
    full, metas = parts["full"]
    available = set(metas)
    salt = full.id.hex()
    ids = _targets(db, targets, available, salt)
    sizes = groups_for(len(ids), p)
    summary = {n: u.summary() for n, (u, _) in parts.items()}
    now = time.time()
    state = "awaiting_approval" if p["approvals"] else "ready"
    with db.transaction():
        rid = db.insert("INSERT INTO rollouts (name, update_id, update_summary, update_archive, params, state, "
                        "approvals_needed, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (p["name"] or "update %s" % salt[:8], salt, json.dumps(summary, sort_keys=True),
                         bytes(update_bytes), json.dumps(dict(p, targets=targets), sort_keys=True), state,
                         p["approvals"], by, now))
        i = 0
        for g, size in enumerate(sizes):
            db.execute("INSERT INTO rollout_groups (rollout_id, idx, size, state) VALUES (?, ?, ?, 'pending')",
                       (rid, g, size))
            for dev in ids[i:i + size]:
                db.execute("INSERT INTO rollout_devices (rollout_id, device_id, group_idx, state) "
                           "VALUES (?, ?, ?, 'pending')", (rid, dev, g))
            i += size
        _timeline(db, rid, "created", reason=by, now=now)
    return {"ok": True, "id": rid, "devices": len(ids), "groups": sizes, "state": state}


def approve(db, rollout_id, by):
    """The second person's approval (two-person rule): not the creator."""
    with db.transaction():
        r = _get(db, rollout_id, lock=True)
        if r["state"] != "awaiting_approval":
            raise RolloutError("rollout %d is %s: nothing to approve" % (r["id"], r["state"]))
        if by == r["created_by"]:
            raise RolloutError("rollout %d: the operator who created it cannot approve it (two-person rule)" % r["id"])
        db.execute("INSERT INTO rollout_approvals (rollout_id, approved_by, approved_at) VALUES (?, ?, ?) "
                   "ON CONFLICT DO NOTHING", (r["id"], by, time.time()))
        n = db.one("SELECT count(*) AS n FROM rollout_approvals WHERE rollout_id = ?", (r["id"],))["n"]
        state = "ready" if n >= r["approvals_needed"] else "awaiting_approval"
        db.execute("UPDATE rollouts SET state = ? WHERE id = ?", (state, r["id"]))
        _timeline(db, r["id"], "approved", reason=by)
    return {"ok": True, "id": r["id"], "state": state}


def _transition(db, rollout_id, by, allowed, new, what, extra=""):
    with db.transaction():
        r = _get(db, rollout_id, lock=True)
        if r["state"] not in allowed:
            raise RolloutError("rollout %d is %s: cannot %s it" % (r["id"], r["state"], what))
        now = time.time()
        db.execute("UPDATE rollouts SET state = ?" + extra + " WHERE id = ?",
                   (new,) + ((by, now) if extra else ()) + (r["id"],))
        if new == "cancelled":
            db.execute("UPDATE rollout_devices SET state = 'cancelled', updated_at = ? "
                       "WHERE rollout_id = ? AND state = 'pending'", (now, r["id"]))
            db.execute("UPDATE rollout_groups SET state = 'cancelled' WHERE rollout_id = ? AND state = 'pending'",
                       (r["id"],))
            db.execute("UPDATE rollouts SET finished_at = ? WHERE id = ?", (now, r["id"]))
        _timeline(db, r["id"], new, reason=by, now=now)
    return {"ok": True, "id": r["id"], "state": new}


def start(db, rollout_id, by):
    """Start a ready rollout, unless one of its devices is still in another
    running or paused rollout (one update at a time per device: the engine
    tracks a device's reports for one offer)."""
    busy = db.one("SELECT d.device_id, d.rollout_id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id "
                  "WHERE r.state IN ('running', 'paused') AND r.id <> ? AND d.state NOT IN "
                  "('confirmed', 'rejected', 'rolled_back', 'timed_out', 'cancelled', 'not_started') "
                  "AND d.device_id IN (SELECT device_id FROM rollout_devices WHERE rollout_id = ?) LIMIT 1",
                  (_get(db, rollout_id)["id"], int(rollout_id)))
    if busy:
        raise RolloutError("device %s is still in rollout %d: finish, pause and cancel, or wait for that one first"
                           % (busy["device_id"], busy["rollout_id"]))
    return _transition(db, rollout_id, by, ("ready",), "running", "start",
                       ", started_by = ?, started_at = ?")


def pause(db, rollout_id, by):
    return _transition(db, rollout_id, by, ("running",), "paused", "pause")


def resume(db, rollout_id, by):
    return _transition(db, rollout_id, by, ("paused",), "running", "resume")


def cancel(db, rollout_id, by):
    return _transition(db, rollout_id, by, ("awaiting_approval", "ready", "running", "paused"), "cancelled",
                       "cancel")


def status(db, rollout_id):
    """Progress: {"ok", "id", "state", "stop_reason", "current_group",
    "groups", "counts", "done_pct", "devices"}."""
    from ictl.service import store
    r = store.rollout(db, rollout_id)
    if r is None:
        raise RolloutError("no rollout %r" % (rollout_id,))
    ok_states = UNTIL[r["params"].get("until", "confirmed")]
    n = len(r["devices"]) or 1
    done = sum(1 for d in r["devices"] if d["state"] in ok_states)
    return {"ok": True, "id": r["id"], "state": r["state"], "stop_reason": r["stop_reason"],
            "current_group": r["current_group"], "groups": r["groups"], "counts": r["counts"],
            "done_pct": round(100.0 * done / n, 1), "devices": r["devices"]}


# ---------------------------------------------------------------- the picture

def _timeline_res(db, rollout_id):
    r = db.one("SELECT started_at, finished_at FROM rollouts WHERE id = ?", (int(rollout_id),))
    if r is None:
        raise RolloutError("no rollout %r" % (rollout_id,))
    t0 = r["started_at"] or time.time()
    rows = db.query("SELECT t, device_id, state, pct, reason FROM rollout_timeline WHERE rollout_id = ? "
                    "AND device_id IS NOT NULL ORDER BY t, id", (int(rollout_id),))
    devs = [d["device_id"] for d in db.query("SELECT device_id FROM rollout_devices WHERE rollout_id = ?",
                                             (int(rollout_id),))]
    end = (r["finished_at"] or time.time()) - t0
    return {"results": {d: {} for d in devs}, "seconds": max(end, 1.0),
            "timeline": [(x["t"] - t0, x["device_id"], x["state"], x["pct"], x["reason"]) for x in rows],
            "faults": {"cuts": [], "broker_restart": None}}


def timeline_picture(db, rollout_id, fmt="svg"):
    """The fleet simulation's timeline picture (ictl.timeline.timeline_png:
    one row per device, its state over time) for this rollout: SVG or PNG bytes."""
    if fmt not in ("svg", "png"):
        raise RolloutError("picture format: svg or png")
    from ictl import timeline
    res = _timeline_res(db, rollout_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline." + fmt)
        timeline.timeline_png(res, path)
        with open(path, "rb") as f:
            return f.read()


def timeline_svg(db, rollout_id):
    return timeline_picture(db, rollout_id, "svg")


def timeline_png(db, rollout_id):
    return timeline_picture(db, rollout_id, "png")


# ---------------------------------------------------------------- the engine

class Engine(Periodic):
    """Runs the running rollouts: offers each group's devices the update
    through one ictl.update.Rollout session (identity fleet-updates),
    copies their reports into rollout_devices and the timeline, starts the
    next group or stops the rollout. One engine per fleet: it holds a lease
    in service_state, renewed every tick, so a second service instance
    stands by instead of offering updates twice."""

    LEASE_S = 15
    name = "rollout-engine"

    def __init__(self, db_url, host, port, ca_path, cert_path, key_path, prefix="ironclad", tick_s=0.5,
                 resend_s=30.0, cache_dir=None, name=None):
        super().__init__(db_url, tick_s)
        self.broker = (host, port, ca_path, cert_path, key_path, prefix)
        self.resend_s = resend_s
        self.cache_dir = cache_dir or tempfile.mkdtemp(prefix="ictl-rollouts-")
        self.holder = name or "engine-%d-%d" % (os.getpid(), id(self))
        self._pub = None
        self._offered = {}         # rollout id -> {device: timeline index seen}
        self._tl_seen = 0
        self._t0_wall = time.time()

    def _session(self):
        if self._pub is None:
            host, port, ca, cert, key, prefix = self.broker
            self._pub = upd.Rollout(host, port, ca, cert, key, prefix=prefix, out=open(os.devnull, "w"),
                                    resend_s=self.resend_s)
            self._pub.connect()
            # the session's timeline counts seconds from its monotonic t0
            self._t0_wall = time.time() - (time.monotonic() - self._pub.t0)
        return self._pub

    def _lease(self, db):
        now = time.time()
        row = db.one("SELECT value, updated_at FROM service_state WHERE name = 'rollout-engine'")
        if row and row["value"] != self.holder and now - row["updated_at"] < self.LEASE_S:
            return False
        if row:
            n = db.execute("UPDATE service_state SET value = ?, updated_at = ? WHERE name = 'rollout-engine' "
                           "AND value = ? AND updated_at = ?", (self.holder, now, row["value"], row["updated_at"]))
            return n == 1
        try:
            db.execute("INSERT INTO service_state (name, value, updated_at) VALUES ('rollout-engine', ?, ?)",
                       (self.holder, now))
            return True
        except service_db.IntegrityError:
            return False

    def tick(self, db, now=None):
        """One round over the running rollouts (the tests call it directly)."""
        now = now or time.time()
        for r in db.query("SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id"):
            self._advance(db, r["id"], now)

    def _advance(self, db, rid, now):
        r = db.one("SELECT * FROM rollouts WHERE id = ?", (rid,))
        p = json.loads(r["params"])
        ok_states = UNTIL[p["until"]]
        final = set(ok_states) | {"rejected", "rolled_back"}
        self._collect(db, rid, final, now)
        devs = db.query("SELECT device_id, group_idx, state, offered_at FROM rollout_devices WHERE rollout_id = ?",
                        (rid,))
        offered = [d for d in devs if d["offered_at"] is not None]
        # time-outs: offered, not final, past the group time limit
        for d in offered:
            if d["state"] not in final and d["state"] not in ("timed_out", "cancelled") \
                    and now - d["offered_at"] > p["group_timeout_s"]:
                db.execute("UPDATE rollout_devices SET state = 'timed_out', updated_at = ? "
                           "WHERE rollout_id = ? AND device_id = ?", (now, rid, d["device_id"]))
                _timeline(db, rid, "timed_out", d["device_id"], now=now)
                d["state"] = "timed_out"
        failed = sum(1 for d in offered if d["state"] in FAILED)
        if len(offered) >= p["min_devices"] and offered and failed / len(offered) > p["failure_threshold"]:
            return self._finish(db, rid, "stopped", "failures %d of %d devices offered, above the threshold %.0f%%"
                                % (failed, len(offered), 100 * p["failure_threshold"]), now)
        g = r["current_group"]
        if g >= 0 and rid not in self._offered:
            # this engine (re)started while the group was under way: offer
            # it again to those not finished (a device given the same
            # metadata again only asks for the chunks it lacks)
            again = [d["device_id"] for d in devs if d["group_idx"] == g and d["state"] not in final
                     and d["state"] not in ("timed_out", "cancelled")]
            self._offered[rid] = set(d["device_id"] for d in devs if d["group_idx"] <= g)
            if again:
                self._session().offer(self._plans(db, rid, again))
        if g >= 0:
            members = [d for d in devs if d["group_idx"] == g]
            if not all(d["state"] in final or d["state"] in ("timed_out", "cancelled") for d in members):
                return          # the group is still under way
            good = sum(1 for d in members if d["state"] in ok_states)
            db.execute("UPDATE rollout_groups SET state = 'done', finished_at = COALESCE(finished_at, ?) "
                       "WHERE rollout_id = ? AND idx = ?", (now, rid, g))
            if good < p["success_threshold"] * len(members) - 1e-9:
                return self._finish(db, rid, "stopped", "group %d: %d of %d devices succeeded, below the success "
                                    "threshold %.0f%%" % (g, good, len(members), 100 * p["success_threshold"]), now)
        if r["state"] == "paused":
            return              # the next group waits for resume
        nxt = g + 1
        members = [d["device_id"] for d in devs if d["group_idx"] == nxt]
        if not members:
            return self._finish(db, rid, "done", None, now)
        self._offer(db, rid, nxt, members, now)

    def _plans(self, db, rid, members):
        parts = _unpacked(db, rid, self.cache_dir)
        return {dev: [(parts[n][0], parts[n][1][dev]) for n in ("delta", "full") if n in parts and dev in parts[n][1]]
                for dev in members}

    def _offer(self, db, rid, g, members, now):
        plans = self._plans(db, rid, members)
        with db.transaction():
            n = db.execute("UPDATE rollouts SET current_group = ? WHERE id = ? AND current_group = ? "
                           "AND state = 'running'", (g, rid, g - 1))
            if n != 1:
                return
            db.execute("UPDATE rollout_groups SET state = 'running', started_at = ? WHERE rollout_id = ? AND idx = ?",
                       (now, rid, g))
            for dev in members:
                db.execute("UPDATE rollout_devices SET state = 'sent', kind = ?, offered_at = ?, updated_at = ? "
                           "WHERE rollout_id = ? AND device_id = ?",
                           (upd.Rollout._kind(plans[dev][0][0]), now, now, rid, dev))
                _timeline(db, rid, "sent", dev, now=now)
            _timeline(db, rid, "group %d started" % g, now=now)
        self._offered.setdefault(rid, set()).update(members)
        self._session().offer(plans)

    def _collect(self, db, rid, final, now):
        """Copy the Rollout session's device reports into the database."""
        devs = self._offered.get(rid)
        if not devs or self._pub is None:
            return
        pub = self._pub
        with pub._lock:
            status = {d: dict(pub.status.get(d, {})) for d in devs}
            new_tl = pub.timeline[self._tl_seen:]
            self._tl_seen = len(pub.timeline)
        pub.resend_due([d for d in devs if d in pub.status], final)
        for t, dev, state, pct, reason in new_tl:
            if dev in devs:     # what a device reported: bounded like the rows above
                _timeline(db, rid, str(state or "?")[:32], dev, pct if type(pct) is int and 0 <= pct <= 100 else None,
                          str(reason)[:200] if reason else None, now=self._t0_wall + t)
        for dev, s in status.items():
            st = s.get("state")
            if not isinstance(st, str) or not st:
                continue
            pct = s.get("pct") if type(s.get("pct")) is int and 0 <= s["pct"] <= 100 else None
            db.execute("UPDATE rollout_devices SET state = ?, kind = ?, pct = ?, reason = ?, updated_at = ? "
                       "WHERE rollout_id = ? AND device_id = ? AND state NOT IN ('timed_out', 'cancelled') "
                       "AND (state <> ? OR pct IS NULL OR pct <> ?)",
                       (st[:32], s.get("kind"), pct, str(s.get("reason"))[:200] if s.get("reason") else None, now,
                        rid, dev, st[:32], -1 if pct is None else pct))

    def _finish(self, db, rid, state, reason, now):
        with db.transaction():
            db.execute("UPDATE rollouts SET state = ?, stop_reason = ?, finished_at = ? WHERE id = ? "
                       "AND state IN ('running', 'paused')", (state, reason, now, rid))
            db.execute("UPDATE rollout_devices SET state = 'not_started', updated_at = ? "
                       "WHERE rollout_id = ? AND state = 'pending'", (now, rid))
            _timeline(db, rid, state, reason=reason, now=now)
        self._offered.pop(rid, None)

    def step(self, db):
        if self._lease(db):
            self.tick(db)

    def stop(self):
        super().stop()
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        shutil.rmtree(self.cache_dir, ignore_errors=True)
