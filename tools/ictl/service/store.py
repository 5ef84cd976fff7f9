"""Reads for the console's pages and the JSON API (the tables are CORE's:
docs/service.md "Schema"). Every function takes the Database first; rows
are dicts; times are unix seconds; nothing here writes.

Device data is hostile: values come back exactly as stored (the pages
escape them)."""
import json

MAX_LIMIT = 10000
# "online" is the device's own word: "online" at connect, and its last will
# ("offline"), which the broker publishes when the connection drops or the
# keepalive lapses (1.5 x keepalive, MQTT 3.1.1 section 3.1.2.10). Not a
# guess from last_seen: a device may report only hourly.


def _limit(n, default=50):
    try:
        n = int(n if n is not None else default)
    except (TypeError, ValueError):
        n = default
    return max(1, min(n, MAX_LIMIT))


def _offset(n):
    try:
        return max(0, int(n or 0))
    except (TypeError, ValueError):
        return 0


def _like(q):
    """A LIKE pattern matching q literally anywhere (ESCAPE '!')."""
    return "%" + q.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


def _loads(text, default=None):
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def overview(db, q=None, status=None, limit=50, offset=0, now=None):
    """{"total": n, "devices": [{device_id, online, app_version, last_seen,
    open_alarms}]}: q matches the device id or app version; status is None,
    "online", "offline" or "alarm" (has an open alarm)."""
    where, params = [], []
    if q:
        where.append("(d.device_id LIKE ? ESCAPE '!' OR d.app_version LIKE ? ESCAPE '!')")
        params += [_like(str(q)[:100])] * 2
    if status == "online":
        where.append("d.online = 1")
    elif status == "offline":
        where.append("d.online = 0")
    elif status == "alarm":
        where.append("EXISTS (SELECT 1 FROM alarms a WHERE a.device_id = d.device_id AND a.acked_at IS NULL)")
    w = (" WHERE " + " AND ".join(where)) if where else ""
    total = db.one("SELECT count(*) AS n FROM devices d" + w, params)["n"]
    rows = db.query("SELECT d.device_id, d.online, d.app_version, d.last_seen, d.first_seen, d.cert_serial, "
                    "(SELECT count(*) FROM alarms a WHERE a.device_id = d.device_id AND a.acked_at IS NULL) "
                    "AS open_alarms FROM devices d" + w + " ORDER BY d.device_id LIMIT ? OFFSET ?",
                    params + [_limit(limit), _offset(offset)])
    for r in rows:
        r["online"] = bool(r["online"])
    return {"total": total, "devices": rows}


def counts(db):
    """Fleet totals: devices, online, open alarms, readings."""
    return {"devices": db.one("SELECT count(*) AS n FROM devices")["n"],
            "online": db.one("SELECT count(*) AS n FROM devices WHERE online = 1")["n"],
            "open_alarms": db.one("SELECT count(*) AS n FROM alarms WHERE acked_at IS NULL")["n"]}


def device(db, device_id):
    """One device: its row plus chain_status ("ok"/"broken"), cert (serial,
    not_after, pem, status from the CA inventory), open_alarms; None if unknown."""
    r = db.one("SELECT device_id, online, app_version, first_seen, last_seen, last_event_seq, chain_ok, key_epoch, "
               "cert_pem, cert_serial, cert_not_after FROM devices WHERE device_id = ?", (device_id,))
    if r is None:
        return None
    r["online"] = bool(r["online"])
    r["chain_status"] = "ok" if r.pop("chain_ok") else "broken"
    inv = db.one("SELECT status, reason, revoked_at FROM certificates WHERE serial = ?", (r["cert_serial"],)) \
        if r["cert_serial"] else None
    r["cert"] = {"serial": r.pop("cert_serial"), "not_after": r.pop("cert_not_after"), "pem": r.pop("cert_pem"),
                 "status": inv["status"] if inv else None, "revoked_at": inv["revoked_at"] if inv else None}
    r["open_alarms"] = db.one("SELECT count(*) AS n FROM alarms WHERE device_id = ? AND acked_at IS NULL",
                              (device_id,))["n"]
    return r


def readings(db, device_id, since=None, until=None, limit=1000):
    """[{ts, seq, counter, body}] oldest first, ts = when stored; the
    newest `limit` in the range."""
    where, params = ["device_id = ?"], [device_id]
    if since is not None:
        where.append("received_at >= ?")
        params.append(float(since))
    if until is not None:
        where.append("received_at <= ?")
        params.append(float(until))
    rows = db.query("SELECT received_at AS ts, seq, counter, device_ts, data FROM readings WHERE "
                    + " AND ".join(where) + " ORDER BY received_at DESC, id DESC LIMIT ?", params + [_limit(limit)])
    rows.reverse()
    for r in rows:
        r["body"] = _loads(r.pop("data"), {})
    return rows


def events(db, device_id=None, limit=100, offset=0, outcome=None):
    """Security events, newest first: {id, device_id, ts, seq, kind, reason, outcome, detail}."""
    where, params = [], []
    if device_id:
        where.append("device_id = ?")
        params.append(device_id)
    if outcome:
        where.append("outcome = ?")
        params.append(outcome)
    w = (" WHERE " + " AND ".join(where)) if where else ""
    return db.query("SELECT id, device_id, received_at AS ts, seq, kind, reason, outcome, detail FROM events" + w
                    + " ORDER BY received_at DESC, id DESC LIMIT ? OFFSET ?", params + [_limit(limit, 100), _offset(offset)])


def alarms(db, open_only=True, device_id=None, limit=200, offset=0):
    """Alarms, newest first: {id, device_id, ts, kind, text, acked_at,
    acknowledged_by, webhook_state}."""
    where, params = [], []
    if open_only:
        where.append("acked_at IS NULL")
    if device_id:
        where.append("device_id = ?")
        params.append(device_id)
    w = (" WHERE " + " AND ".join(where)) if where else ""
    return db.query("SELECT id, device_id, raised_at AS ts, kind, text, acked_at, acked_by AS acknowledged_by, "
                    "webhook_state FROM alarms" + w + " ORDER BY raised_at DESC, id DESC LIMIT ? OFFSET ?",
                    params + [_limit(limit, 200), _offset(offset)])


def commands(db, device_id, limit=100):
    """Commands sent to the device, newest first, each with its reply
    ({ok, reason, ts} or None)."""
    rows = db.query("SELECT id, op, args, counter, sent_by, sent_at FROM commands WHERE device_id = ? "
                    "ORDER BY sent_at DESC, id DESC LIMIT ?", (device_id, _limit(limit, 100)))
    for r in rows:
        r["args"] = _loads(r["args"], {})
        rep = db.one("SELECT ok, reason, received_at AS ts FROM replies WHERE device_id = ? AND cmd = ? "
                     "ORDER BY id LIMIT 1", (device_id, r["counter"]))
        r["reply"] = dict(rep, ok=bool(rep["ok"])) if rep else None
    return rows


def replies(db, device_id, limit=100):
    rows = db.query("SELECT cmd, ok, reason, received_at AS ts FROM replies WHERE device_id = ? "
                    "ORDER BY received_at DESC, id DESC LIMIT ?", (device_id, _limit(limit, 100)))
    for r in rows:
        r["ok"] = bool(r["ok"])
    return rows


def update_reports(db, device_id, limit=100):
    """The device's update reports, newest first: {ts, update_id, state, pct, reason}."""
    return db.query("SELECT received_at AS ts, update_id, state, pct, reason FROM update_reports "
                    "WHERE device_id = ? ORDER BY received_at DESC, id DESC LIMIT ?", (device_id, _limit(limit, 100)))


def rollouts(db, limit=100, offset=0):
    """Rollouts, newest first, with per-state device counts."""
    rows = db.query("SELECT id, name, update_id, state, stop_reason, created_by, created_at, started_at, "
                    "finished_at, current_group, approvals_needed FROM rollouts ORDER BY id DESC LIMIT ? OFFSET ?",
                    (_limit(limit, 100), _offset(offset)))
    for r in rows:
        r["counts"] = _rollout_counts(db, r["id"])
    return rows


def _rollout_counts(db, rollout_id):
    return {x["state"]: x["n"] for x in db.query(
        "SELECT state, count(*) AS n FROM rollout_devices WHERE rollout_id = ? GROUP BY state", (rollout_id,))}


def rollout(db, rollout_id):
    """One rollout: its row (params and update summary decoded), groups,
    devices (state per device), approvals, counts; None if unknown."""
    try:
        rollout_id = int(rollout_id)
    except (TypeError, ValueError):
        return None
    r = db.one("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
    if r is None:
        return None
    r.pop("update_archive", None)
    r["params"] = _loads(r["params"], {})
    r["update_summary"] = _loads(r["update_summary"], {})
    r["groups"] = db.query("SELECT idx, size, state, started_at, finished_at FROM rollout_groups "
                           "WHERE rollout_id = ? ORDER BY idx", (rollout_id,))
    r["devices"] = db.query("SELECT device_id, group_idx, state, kind, pct, reason, offered_at, updated_at "
                            "FROM rollout_devices WHERE rollout_id = ? ORDER BY group_idx, device_id", (rollout_id,))
    r["approvals"] = db.query("SELECT approved_by, approved_at FROM rollout_approvals WHERE rollout_id = ? "
                              "ORDER BY approved_at", (rollout_id,))
    r["counts"] = _rollout_counts(db, rollout_id)
    return r


def provisioning_records(db, limit=500, offset=0):
    """Provisioning log rows (provision.jsonl, imported), newest first:
    {device_id, at, outcome, operator, record (dict)}."""
    rows = db.query("SELECT device_id, at, outcome, operator, record FROM provisioning_records "
                    "ORDER BY at DESC, digest LIMIT ? OFFSET ?", (_limit(limit, 500), _offset(offset)))
    for r in rows:
        r["record"] = _loads(r["record"], {})
    return rows


def certificates(db, device_id=None):
    """Device certificates from the CA inventory: {serial, device_id,
    fingerprint, not_after, status (issued/provisioned/abandoned/revoked),
    reason, issued_at, revoked_at, operator}."""
    if device_id:
        return db.query("SELECT * FROM certificates WHERE device_id = ? ORDER BY issued_at DESC", (device_id,))
    return db.query("SELECT * FROM certificates ORDER BY device_id, issued_at DESC")
