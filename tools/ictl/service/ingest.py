"""Ingest: the service's MQTT workers. Each subscribes with an operator
identity (as `ictl console` does), opens and checks every message with the
console's own checks (tools/ictl/console.py: COSE opening, certificate and
key epochs, replays, the security-event hash chain) and stores devices,
readings, events, replies, update reports and alarms.

Nothing lost, nothing twice:
  * QoS 1, clean_session=False (a persistent session: what the broker
    queued while a worker was away is delivered when it returns), and
    manual acknowledgement: a message's PUBACK goes out only after the
    transaction that stored it committed. A worker killed in between gets
    the message again, and the console state committed with it (the
    highest Partial IV per topic, the event chain) recognises it; the
    unique keys (readings: device + counter, events: device + seq + hash,
    update reports: device + payload digest) make every insert idempotent
    anyway.
  * The console's per-device memory lives in devices.console_state and is
    read and written in the same transaction as the rows it admits, the
    device rows locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite's write
    lock), so N workers check against one history.

Scale out: N workers share the subscription (`$share/<group>/...`, which
mosquitto offers to MQTT 3.1.1 clients too): the broker hands each message
to one of them. Retained messages are never sent on a shared subscription
(MQTT 5.0 section 4.8.2), and a device's hello is retained: so every worker
also subscribes to <prefix>/+/state/# unshared (hellos, online/offline,
update reports: all idempotent to store). The broker names a client by its
certificate's CN (use_username_as_clientid), so each worker needs its own
operator identity (worker_id(n), in the broker's ACL).

Security events are not shared: their hash chain is checked record by
record in order, so one worker, the events owner (fleet-ingest-1), takes
every device's events on an unshared subscription, in the order the broker
keeps; events are few (a device logs a handful a day).

Sharing reorders readings: the broker gives consecutive messages of one
device to different workers, and the two may reach the database in the
other order.
The console's own replay check refuses any counter below the highest seen
(right for one subscriber: the broker keeps a device's order). Shared
workers use SharedConsole instead: an anti-replay window as IPsec and DTLS
keep (RFC 4303 section 3.4.3, RFC 6347 section 4.1.2.6): a counter below
the highest is accepted once if it lies within DUP_WINDOW of it and was not
seen; a counter seen before is a duplicate; one older than the window is
refused as a replay (an alarm). Sealed messages cannot be forged, so what
the window admits late is only ever the device's own.
"""
import bisect
import hashlib
import json
import queue
import ssl
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ictl import ToolError, pki
from ictl import update as upd
from ictl.console import DUP_WINDOW, Console, device_state_from_json, device_state_json
from ictl.service import alarms
from ictl.service import db as service_db

SHARE_GROUP = "ironclad-ingest"
BATCH = 64                  # messages per transaction (mosquitto keeps 20 in flight per client)
REPORT_MAX = 4096           # an update report is a small JSON object


def worker_id(n):
    """The operator identity (certificate CN, MQTT client id) of worker n (1-based)."""
    return "fleet-ingest-%d" % n


def worker_credentials(pki_dir, n):
    """(key path, cert path) of worker n, issued by the fleet CA on first use."""
    import os
    name = worker_id(n)
    kp, cp = os.path.join(pki_dir, name + ".key"), os.path.join(pki_dir, name + ".crt")
    if not (os.path.exists(kp) and os.path.exists(cp)):
        ca = pki.load_ca(pki_dir)
        k = pki.new_key()
        pki.write_key_pem(kp, k)
        pki.write_cert_pem(cp, pki.issue_console_cert(ca, k.public_key(), name=name))
    return kp, cp


def _jsonable(v, depth=0):
    # Device data is hostile: keep only what JSON can say, bytes as hex.
    if depth > 8:
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, depth + 1) for x in v]
    return repr(v)


def _int64(v):
    """An int (not a bool) that fits a BIGINT column."""
    return isinstance(v, int) and not isinstance(v, bool) and -2 ** 63 <= v < 2 ** 63


def _digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


class SharedConsole(Console):
    """The console's checks with a sliding anti-replay window (see the module
    docstring): recent holds every accepted counter above high - DUP_WINDOW
    (and nothing older), so a counter in the window is a duplicate exactly
    when it is in recent."""

    def _replay_check(self, d, kind, ctr):
        high = d["high"].get(kind, -1)
        recent = d["recent"].setdefault(kind, [])
        if ctr in recent:
            return "duplicate of #%d (QoS 1 redelivery): dropped" % ctr
        if ctr <= high - DUP_WINDOW:
            return "replayed or reordered: #%d after #%d: dropped" % (ctr, high)
        high = max(high, ctr)
        d["high"][kind] = high
        bisect.insort(recent, ctr)
        recent[:] = [c for c in recent if c > high - DUP_WINDOW]
        return None


class Ingest:
    """One worker. process_batch() works without a broker (tests feed it);
    start() connects and runs until stop()."""

    def __init__(self, db_url, fleet_key, ca_path, prefix="ironclad", host=None, port=None, cert_path=None,
                 key_path=None, client_id=pki.CONSOLE_ID, shared=False, group=SHARE_GROUP, batch=BATCH, events=True):
        self.db_url = db_url
        self.db = service_db.connect(db_url)
        self.prefix = prefix
        self.host, self.port = host, port
        self.client_id = client_id
        self.shared = shared
        self.events = events
        self.group = group
        self.batch = batch
        cls = SharedConsole if shared else Console
        self.console = cls(host, port, ca_path, cert_path, key_path, fleet_key, prefix, None, client_id)
        self._keys = {}           # (device, public key) -> derived keys (ECDH once per device)
        self._q = queue.Queue()
        self._client = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._t = None
        self.counts = {"messages": 0, "readings": 0, "events": 0, "replies": 0, "reports": 0, "alarms": 0,
                       "dropped": 0, "batches": 0, "db_retries": 0}
        self.errors = []

    # ------------------------------------------------------------ storing
    def _device_of(self, topic):
        parts = topic.split("/")
        pl = self.prefix.count("/") + 1
        if len(parts) < pl + 2 or "/".join(parts[:pl]) != self.prefix:
            return None, None
        dev = parts[pl]
        try:
            pki.validate_device_id(dev)
        except ToolError:
            return None, None
        return dev, "/".join(parts[pl + 1:])

    def process_batch(self, items, now=None):
        """Store [(topic, payload)]: one transaction on SQLite (one writer
        anyway). On PostgreSQL a transaction takes the rows of the batch's
        devices that no other worker holds (FOR UPDATE SKIP LOCKED) and
        stores their messages; the others follow in the next transaction
        (waiting for their rows if it got none), so two workers whose
        batches share devices work side by side instead of in turn. A
        device's messages stay in order. Returns the console Messages
        (alarms included)."""
        now = now or time.time()
        db = self.db
        owner = [self._device_of(t)[0] for t, _ in items]      # each message's device (None: bad topic)
        devs = sorted({d for d in owner if d})
        if devs:    # new devices get a row first, so that every one can be locked below
            db.execute("INSERT INTO devices (device_id, first_seen, last_seen) VALUES %s ON CONFLICT DO NOTHING"
                       % ", ".join(["(?, ?, ?)"] * len(devs)), [v for dev in devs for v in (dev, now, now)])
        out = []
        todo, left = list(zip(owner, items)), devs
        while True:
            with db.transaction():
                rows = self._lock(left, skip=db.engine == "postgresql")
                if not rows and left:
                    rows = self._lock(left, skip=False)
                mine = {r["device_id"] for r in rows}
                if not mine:    # nothing lockable: the rest goes now (unknown devices get their alarms)
                    now_items, later = todo, []
                else:
                    mine.add(None)
                    now_items = [it for it in todo if it[0] in mine]
                    later = [it for it in todo if it[0] not in mine]
                out += self._apply([it for _, it in now_items], rows, now)
            todo = later
            left = [d for d in left if d not in mine]
            if not todo:
                break
        self.counts["messages"] += len(items)
        self.counts["batches"] += 1
        return out

    def _lock(self, devs, skip):
        """The device rows, locked (one round trip; ORDER BY: workers lock
        rows in one order, no deadlock)."""
        if not devs:
            return []
        lock = ""
        if self.db.engine == "postgresql":
            lock = " FOR UPDATE SKIP LOCKED" if skip else " FOR UPDATE"
        return self.db.query("SELECT device_id, console_state FROM devices WHERE device_id IN (%s) "
                             "ORDER BY device_id" % ", ".join("?" * len(devs)) + lock, devs)

    def _apply(self, items, rows, now):
        db = self.db
        con = self.console
        con.devices = {}
        out = []
        for r in rows:
            dev = r["device_id"]
            if r["console_state"]:
                try:
                    d = device_state_from_json(json.loads(r["console_state"]))
                except (ValueError, KeyError, TypeError):
                    self._alarm(dev, "other", "stored console state unreadable: device history restarts", now)
                    continue
                d["keys"] = self._keys.setdefault((dev, d["pub"]), {})
                con.devices[dev] = d
        touched = {}
        for topic, payload in items:
            out += self._one(topic, bytes(payload), now, touched)
        for r in rows:
            dev = r["device_id"]
            d = con.devices.get(dev)
            st = json.dumps(device_state_json(d), sort_keys=True) if d else None
            if d:
                self._keys[(dev, d["pub"])] = d["keys"]
            t = touched.get(dev, {})
            sets = ["last_seen = ?", "console_state = ?"]
            vals = [now, st]
            for col in ("pub", "key_epoch", "cert_pem", "cert_serial", "cert_not_after", "online", "app_version",
                        "last_event_seq", "chain_ok"):
                if col in t:
                    sets.append(col + " = ?")
                    vals.append(t[col])
            db.execute("UPDATE devices SET " + ", ".join(sets) + " WHERE device_id = ?", vals + [dev])
        return out

    def _alarm(self, dev, kind, text, now, source=None):
        if alarms.raise_alarm(self.db, dev, kind, text, source, now) is not None:
            self.counts["alarms"] += 1

    def _one(self, topic, payload, now, touched):
        dev, kind = self._device_of(topic)
        if dev and kind == upd.REPORT_KIND:
            self._report(dev, payload, now, touched.setdefault(dev, {}))
            return []
        con = self.console
        before = con.devices.get(dev, {}).get("pub") if dev else None
        msgs = con.handle(topic, payload)
        t = touched.setdefault(dev, {}) if dev else {}
        d = con.devices.get(dev) if dev else None
        for m in msgs:
            self._store(m, dev or m.device, kind, topic, payload, now, t)
        if before is not None and d is not None and d["pub"] != before:
            self._alarm(dev, "key_change", "device presented a new key (certificate %s): its history starts again"
                        % t.get("cert_serial", "?"), now, _digest("key", topic, payload))
        if d is not None and before != d["pub"]:
            t["pub"] = d["pub"].hex()
        return msgs

    def _store(self, m, dev, kind, topic, payload, now, t):
        db = self.db
        if m.kind == "alarm":
            self._alarm(dev, alarms.classify(m.text), m.text, now, _digest(topic, payload, m.text))
            if "event" in m.text and dev in self.console.devices:
                t["chain_ok"] = 0
        elif m.kind in ("telemetry", "events", "reply") and m.body is None:
            self.counts["dropped"] += 1     # a duplicate (QoS 1 redelivery) the console dropped
        elif m.kind in ("telemetry", "events", "reply") and not _int64(m.counter):
            # a Partial IV may be 13 bytes; the columns are 64-bit: the device's
            # own counter is far below (ironclad.nonce), so this is not one of ours
            self._alarm(dev, "other", "%s counter %d beyond 2^63: not stored" % (m.kind, m.counter), now,
                        _digest(topic, payload, "counter"))
        elif m.kind == "telemetry":
            body = {k: v for k, v in m.body.items() if k != "id"}
            seq = body.get("seq") if _int64(body.get("seq")) else None
            ts = body.get("ts") if _int64(body.get("ts")) or isinstance(body.get("ts"), float) else None
            n = db.execute("INSERT INTO readings (device_id, key_id, counter, seq, device_ts, received_at, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           (dev, self._key_id(dev), m.counter, seq, ts, now, json.dumps(_jsonable(body), sort_keys=True)))
            self.counts["readings"] += n
        elif m.kind == "events":
            r = m.body
            n = db.execute("INSERT INTO events (device_id, key_id, seq, kind, reason, outcome, detail, device_ms, "
                           "device_wall, hash, counter, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                           "ON CONFLICT DO NOTHING",
                           (dev, self._key_id(dev), r["seq"], r["kind"], r["reason"], r["outcome"], r["detail"], r["ms"], r["wall"],
                            r["hash"].hex(), m.counter, now))
            self.counts["events"] += n
            t["last_event_seq"] = r["seq"]
            a = alarms.event_alarm(r)
            if a:
                self._alarm(dev, a[0], a[1], now, _digest("event", dev, r["seq"], r["hash"]))
        elif m.kind == "reply":
            b = m.body
            n = db.execute("INSERT INTO replies (device_id, key_id, cmd, ok, reason, counter, received_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           (dev, self._key_id(dev), b.get("cmd") if _int64(b.get("cmd")) else None, 1 if b.get("ok") else 0,
                            str(b.get("reason") or "")[:200], m.counter, now))
            self.counts["replies"] += n
        elif m.kind == "state":
            if isinstance(m.body, dict) and "cert" in m.body:       # a hello that checked
                t.update(self._cert_info(m.body))
                t["online"] = 1
            elif kind == "state" and payload in (b"online", b"offline"):
                t["online"] = 1 if payload == b"online" else 0

    def _key_id(self, dev):
        return hashlib.sha256(self.console.devices[dev]["pub"]).hexdigest()[:16]

    @staticmethod
    def _cert_info(hello):
        cert = x509.load_der_x509_certificate(hello["cert"])
        return {"cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "cert_serial": "%x" % cert.serial_number,
                "cert_not_after": cert.not_valid_after_utc.timestamp(),
                "key_epoch": hello["epoch"].hex()}

    def _report(self, dev, payload, now, t):
        try:
            rep = json.loads(payload[:REPORT_MAX]) if len(payload) <= REPORT_MAX else None
        except ValueError:
            rep = None
        if not isinstance(rep, dict):
            self._alarm(dev, "other", "update report is not a JSON object: ignored", now, _digest("rep", payload))
            return
        state = rep.get("state") if isinstance(rep.get("state"), str) else None
        pct = rep.get("pct") if _int64(rep.get("pct")) and 0 <= rep["pct"] <= 100 else None
        reason = str(rep.get("reason"))[:200] if rep.get("reason") is not None else None
        uid = str(rep.get("id"))[:64] if rep.get("id") is not None else None
        n = self.db.execute("INSERT INTO update_reports (device_id, update_id, state, pct, reason, body, digest, "
                            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (dev, uid, state and state[:32], pct, reason,
                             json.dumps(_jsonable(rep), sort_keys=True), _digest(payload), now))
        self.counts["reports"] += n
        if n and state in ("confirmed", "rolled_back") and isinstance(rep.get("ver"), int):
            v = rep["ver"]
            if state == "confirmed":
                t["app_version"] = "%d.%d.%d" % (v >> 24 & 0xFF, v >> 16 & 0xFF, v & 0xFFFF)
        if state == "rolled_back":
            self._alarm(dev, "rollback", "device rolled update %s back" % uid, now, _digest("rep", payload))

    # ------------------------------------------------------------ MQTT
    def topics(self):
        """(topic filter, qos) subscribed: readings and replies shared when
        shared; security events only by the events owner, unshared (their
        hash chain is checked in order; one subscriber keeps the order);
        the state topics unshared by every worker."""
        share = ("$share/%s/" % self.group) if self.shared else ""
        out = [(share + "%s/+/%s" % (self.prefix, k), 1) for k in ("telemetry", "reply")]
        if self.events:
            out.append(("%s/+/events" % self.prefix, 1))
        return out + [("%s/+/state/#" % self.prefix, 1)]

    def start(self, timeout=10):
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                        manual_ack=True)
        con = self.console
        c.tls_set(ca_certs=con.ca_path, certfile=con.cert_path, keyfile=con.key_path, cert_reqs=ssl.CERT_REQUIRED)

        def on_connect(cl, ud, flags, rc, props):
            if not rc.is_failure:
                cl.subscribe(self.topics())

        def on_subscribe(cl, ud, mid, codes, props):
            if any(x.is_failure for x in codes):
                self.errors.append("broker refused a subscription: %s" % codes)
            else:
                self._ready.set()

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_message = lambda cl, ud, msg: self._q.put((msg.topic, msg.payload, msg.mid, msg.qos))
        c.on_disconnect = lambda cl, ud, fl, rc, props: self._ready.clear()
        c.reconnect_delay_set(0.2, 5)
        self._client = c
        try:
            c.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise ToolError("ingest cannot reach the broker at %s:%d: %s" % (self.host, self.port, e)) from None
        self._t = threading.Thread(target=self._run, name="ingest-" + self.client_id, daemon=True)
        self._t.start()
        c.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise ToolError("ingest %s: no subscription at %s:%d within %ds (%s; is %s an operator in the broker "
                            "ACL?)" % (self.client_id, self.host, self.port, timeout,
                                       "; ".join(self.errors) or "no answer", self.client_id))
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                first = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            items = [first]
            while len(items) < self.batch:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            if not self._store_items(items):
                return      # stopping: not acknowledged, the broker sends them again
            for _, _, mid, qos in items:
                if qos and self._client is not None:
                    self._client.ack(mid, qos)

    def _store_items(self, items, tries=3):
        """True once items are committed (retrying while the database is
        away); False when stopped first. A single message that fails with
        the database reachable, tries times, is recorded as an alarm and
        acknowledged (one bad message must not stop the fleet's ingest)."""
        while not self._stop.is_set():
            try:
                self.process_batch([(t, p) for t, p, _, _ in items])
                return True
            except Exception as e:  # noqa: BLE001 - the database away, or a bug on one message
                self.errors.append("%s: %s" % (type(e).__name__, e))
                del self.errors[:-20]
                self.counts["db_retries"] += 1
                self.db.close()
                self.db = service_db.connect_retrying(self.db_url, self._stop)
                if self.db is None:
                    return False
                if len(items) > 1:      # find the one that fails, store the rest
                    return all(self._store_items([it]) for it in items)
                tries -= 1
                if tries <= 0:
                    try:
                        self._alarm("-", "other", "ingest could not store a message on %s: %s"
                                    % (items[0][0][:120], type(e).__name__), time.time(),
                                    _digest("poison", items[0][0], items[0][1]))
                        return True
                    except Exception:   # noqa: BLE001 - the database went away again: keep trying
                        tries = 1
                self._stop.wait(0.5)
        return False

    def wait_ready(self, timeout=10):
        return self._ready.wait(timeout)

    def stop(self):
        self._stop.set()
        c, self._client = self._client, None
        if self._t is not None:
            self._t.join(10)
        if c is not None:
            c.disconnect()
            c.loop_stop()
        self.db.close()
