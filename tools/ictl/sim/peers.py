"""Device peers for the host-side checks (issue 14): Python stand-ins that
speak the device's protocols at the message level, so the host tools can be
driven by thousands of honest and hostile messages in seconds.

- DeviceDouble: a device identity (P-256 key, fleet certificate, key epoch,
  nonce counter) that makes what ironclad.telemetry makes: hellos, sealed
  readings and security-event batches (the 128-byte record of
  lib/ironclad/ironclad/events.py, docs/events.md).
- UpdatePeer: an honest device in a rollout, over the real broker with its
  own certificate: on metadata it asks for windows of chunks (report
  "downloading", next/want, as ironclad.update does), checks each chunk
  against the update's bytes, and reports "applied" at the end. It does not
  decrypt or flash (tests/host/test_update_mqtt.py runs real devices).
- hostile_report(): one report a compromised device might send.

What only a real board shows (timing, heap, flash) is not here."""
import hashlib
import json
import os
import random
import ssl
import struct
import threading
import time

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from ictl import fleetkeys, pki
from ictl import update as host_update
from ictl.console import seal_encrypt0

OUTCOMES = ("info", "rejected", "failed", "ok")  # docs/events.md


def event_record(seq, prev, kind, reason, outcome="info", detail="", ms=0, wall=0):
    """A security-event record as the device writes it (docs/events.md)."""
    k, r, d = kind.encode(), reason.encode(), detail.encode()
    body = bytearray(96)
    body[:3] = b"EV\x01"
    struct.pack_into("<BIIIBBB", body, 3, OUTCOMES.index(outcome), seq, ms, wall, len(k), len(r), len(d))
    body[19:19 + len(k) + len(r) + len(d)] = k + r + d
    return bytes(body) + prev + hashlib.sha256(prev + bytes(body)).digest()[:16]


class DeviceDouble:
    """One device's identity and sealing, for feeding Console.handle()."""

    def __init__(self, ca, device_id, fleet_pub, prefix="ironclad", key=None, days=pki.CLIENT_DAYS):
        self.id = device_id
        self.prefix = prefix
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.cert = pki.issue_client_cert(ca, self.key.public_key(), device_id, days=days)
        self.fleet_pub = fleet_pub
        self.epoch = os.urandom(8)
        self.ctr = 0
        self.seq = 0
        self.head = bytes(16)

    def topic(self, kind):
        return "%s/%s/%s" % (self.prefix, self.id, kind)

    def hello(self):
        return self.topic("state/keys"), cbor2.dumps({"cert": pki.cert_der(self.cert), "epoch": self.epoch})

    def _seal(self, kind, body):
        return self.seal_raw(kind, cbor2.dumps(dict(body, id=self.id)))

    def seal_raw(self, kind, plaintext):
        """Any plaintext, sealed as this device seals: what a compromised
        device (it holds its keys) can send."""
        z = self.key.exchange(ec.ECDH(), self.fleet_pub)
        key, iv = fleetkeys.derive(z, self.epoch, fleetkeys.UP, self.id)
        self.ctr += 1
        topic = self.topic(kind)
        return topic, seal_encrypt0(key, iv, self.ctr, plaintext, topic.encode())

    def reading(self, **values):
        return self._seal("telemetry", values or {"t": 21})

    def events(self, n=1, reason="fuzz"):
        recs = []
        for _ in range(n):
            self.seq += 1
            rec = event_record(self.seq, self.head, "test", reason)
            self.head = rec[112:]
            recs.append(rec)
        return self._seal("events", {"ev": recs})


def client(client_id, ca_path, cert, key, on_message=None):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.tls_set_context(_context(ca_path, cert, key))
    if on_message:
        c.on_message = on_message
    return c


def _context(ca_path, cert, key):
    import tempfile

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_path)
    # load_cert_chain wants files: written 0600 to a private temporary dir
    # that is removed at once (the key is a test identity made at run time).
    with tempfile.TemporaryDirectory(prefix="peer-") as d:
        cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        pki.write_cert_pem(cp, cert)
        pki.write_key_pem(kp, key)
        ctx.load_cert_chain(cp, kp)
    return ctx


def connect(client, host, port, timeout=10):
    """Connect and start the network thread; wait until the broker accepts."""
    up = threading.Event()
    client.on_connect = lambda cl, ud, fl, rc, props: (not rc.is_failure) and up.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not up.wait(timeout):
        client.loop_stop()
        raise TimeoutError("no MQTT session with %s:%d" % (host, port))
    return client


class UpdatePeer:
    """An honest device in a rollout of `upd` (see the module docstring)."""

    REASK_S = 5.0  # ask again when no chunk came for this long (the device: 15 s)

    def __init__(self, br, device_id, upd, ca):
        self.id = device_id
        self.upd = upd
        self.br = br
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = pki.issue_client_cert(ca, self.key.public_key(), device_id)
        self.got = {}
        self.bad_chunks = 0
        self.state = "idle"
        self.next = 0
        self.wend = 0  # the end of the window asked for
        self.last = time.monotonic()
        self._lock = threading.Lock()
        self.c = None

    def start(self):
        self.c = client(self.id, self.br.ca_path, self.cert, self.key, self._on_message)
        connect(self.c, self.br.host, self.br.port)
        sub = threading.Event()
        self.c.on_subscribe = lambda *a: sub.set()
        self.c.subscribe("%s/%s/update" % (self.br.prefix, self.id), qos=1)
        if not sub.wait(10):
            raise TimeoutError("%s: no SUBACK" % self.id)
        return self

    def stop(self):
        if self.c:
            self.c.disconnect()
            self.c.loop_stop()

    def report(self, **rep):
        rep.setdefault("id", self.upd.id.hex())
        self.c.publish("%s/%s/%s" % (self.br.prefix, self.id, host_update.REPORT_KIND), json.dumps(rep), qos=1)

    def _ask(self):
        want = min(host_update.WINDOW, self.upd.n - self.next)
        self.wend = self.next + want
        self.last = time.monotonic()
        self.report(state="downloading", next=self.next, want=want, pct=self.next * 100 // self.upd.n)

    def _on_message(self, cl, ud, msg):
        p = msg.payload
        with self._lock:
            if p[:1] == b"M" and self.state == "idle":
                self.state = "downloading"
                self._ask()
            elif p[:1] == b"C" and self.state == "downloading" and len(p) > 21:
                i = struct.unpack(">I", p[17:21])[0]
                if p[1:17] != self.upd.id or i >= self.upd.n or p != self.upd.chunk(i):
                    self.bad_chunks += 1
                    return
                self.got[i] = True
                self.last = time.monotonic()
                while self.next in self.got:
                    self.next += 1
                if self.next == self.upd.n:
                    self.state = "applied"
                    self.report(state="applied", ver=self.upd.fields["ver"], slot="app_b")
                elif self.next >= self.wend:
                    self._ask()

    def tick(self):
        """Ask again after a quiet spell (a lost window), as the device does."""
        with self._lock:
            if self.state == "downloading" and time.monotonic() - self.last > self.REASK_S:
                self._ask()


def hostile_report(rng, n, uid_hex):
    """(payload bytes, kind): one report a compromised device might send for
    an update of n chunks; kind "valid" when it is well-formed."""
    good = {"state": "downloading", "id": uid_hex, "next": rng.randrange(n),
            "want": 1, "pct": rng.randrange(101)}
    bad_values = (-1, n, n + 5, 10 ** 30, -10 ** 30, "3", "x", 3.0, 1e308, float("nan"), None, True, False, [], {},
                  [1], {"a": 1}, "\udcff" * 3)
    pick = rng.random()
    if pick < 0.12:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200))), "bytes"
    if pick < 0.17:
        return b"\xff\xfe" + json.dumps(good).encode()[2:], "not utf-8"
    if pick < 0.22:
        depth = rng.randrange(100, 500)
        return b"[" * depth + b"]" * depth, "nested"
    if pick < 0.25:
        return json.dumps(dict(good, reason="r" * rng.randrange(1100, 5000))).encode(), "oversized"
    if pick < 0.32:
        return json.dumps(rng.choice([[], "downloading", 1, None, [good]])).encode(), "not an object"
    if pick < 0.34:
        # Honest-shaped (in range): the rollout serves it; kept rare so the
        # broker carries chunks mostly to the honest devices.
        want = rng.randrange(1, min(host_update.WINDOW, n - good["next"]) + 1)
        return json.dumps(dict(good, want=want)).encode(), "valid"
    rep = dict(good)
    field = rng.choice(("next", "want", "pct", "state", "id", "reason", "ver", "slot", "many"))
    if field == "many":
        for f in ("next", "want", "pct", "state", "id"):
            if rng.random() < 0.5:
                rep[f] = rng.choice(bad_values)
    elif field == "state":
        rep["state"] = rng.choice(("DOWNLOADING", "", "x" * 50, 1, None, [], "confirmed\x00"))
    elif field == "id":
        rep["id"] = rng.choice((uid_hex.upper(), uid_hex[:-1], "zz" * 16, 7, [uid_hex], None))
    elif field == "want":
        rep["want"] = rng.choice(bad_values + (0, host_update.WINDOW + 1, n - rep["next"] + 1))
    else:
        rep[field] = rng.choice(bad_values)
    try:
        data = json.dumps(rep)
    except ValueError:
        data = json.dumps(good).replace("downloading", "down\\ud800")
    return data.encode("utf-8", "surrogatepass"), "field " + field


def hostile_plaintext(rng, device_id):
    """A plaintext a compromised device might seal: random CBOR-looking bytes
    (tags, nesting), or maps that name it but carry odd types."""
    pick = rng.random()
    if pick < 0.3:
        return bytes([rng.choice((0xA1, 0xA2, 0x81, 0x9F, 0xC1, 0xC4, 0xD8, 0xD9, 0xBF))]) + \
            bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 24)))
    if pick < 0.4:
        depth = rng.randrange(10, 3000)
        return b"\x81" * depth + b"\x00"
    odd = rng.choice((None, 1, -1, 2 ** 70, 1.5, float("inf"), b"\x00" * 3, "x" * 300, [1, [2]], {1: 2}, True))
    body = {"id": device_id}
    body[rng.choice(("ev", "cmd", "ok", "reason", "t", 1, b"k", "ts"))] = odd
    if rng.random() < 0.3:
        body["ev"] = [rng.choice((b"EV\x01" + bytes(125), odd, b"", bytes(128)))] * rng.randrange(0, 20)
    return cbor2.dumps(body)


def rng_for(seed):
    return random.Random(seed)
