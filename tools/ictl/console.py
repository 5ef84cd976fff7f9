"""The fleet console: subscribes to every device's topics over mutual TLS
(paho-mqtt, the operator certificate CN=fleet-console), opens the COSE
payloads, checks each device's security-event hash chain, and sends
authenticated commands.

    con = Console.for_broker(broker, fleet_key)      # or Console(host, port, ...)
    con.start()
    con.run(print)                                   # Message objects, until stopped
    con.send_command("dev-0001", "interval", s=10)   # -> the command's counter
    con.stop()

Devices become known from their hello (ironclad.telemetry.hello: certificate
and key epoch, retained on <prefix>/<id>/state/keys, or on state itself): the
certificate must be issued by the fleet CA to CN=<id>, be valid now, not be
revoked (the CA's CRL, <CA dir>/crl.pem, signed by the CA and read again when
it changes, and refused whole once past its nextUpdate) and not be superseded
(a newer live certificate for the id in the CA's inventory, an older one than
the console already took, or a key the console saw replaced) nor missing from
an inventory that lists the id's other certificates; its public key and the fleet data key give the payload
keys (tools/ictl/fleetkeys.py). add_device() registers one from a provisioning
record instead.

Whoever publishes the retained hello (the broker) chooses the certificate the
console sees, so history belongs to the device id, never to a key: a new key
is an alarm, and the event chain, the replay high-water marks and the hash
window carry on across it (issue 14). What the console remembers per device,
in a JSON state file (so a restart does not forget): public key, certificate
serial and notBefore, the keys it replaced, key epochs seen, the highest
Partial IV per key epoch and topic (anything at or below it is a duplicate or
a replay), the last event seq and hash (so a record removed, altered or
rewritten between two sessions is still caught), and the last command counter
sent.

The payload format and key schedule are written down in docs/telemetry.md;
the event record format in docs/events.md. Opening uses cryptography's
AESCCM and cbor2: tests/host/test_telemetry.py opens the same messages with
pycose."""
import datetime
import hashlib
import json
import os
import queue
import ssl
import struct
import threading
import time

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from ictl import ToolError, fleetkeys, pki
from ictl import ca as fleet_ca
from ictl.guard import Guard

PROTECTED = b"\xa1\x01\x0a"  # {1: 10}: AES-CCM-16-64-128
KINDS_IN = ("telemetry", "events", "state", "reply")
HELLO = "state/keys"  # ironclad.telemetry.HELLO
DUP_WINDOW = 256  # Partial IVs remembered per topic to tell a duplicate from a replay
EVENT_WINDOW = 128  # event hashes remembered per device (twice the device's ring)
MAX_EPOCHS = 4
MAX_OLD_KEYS = 8  # replaced keys remembered per device (never taken back)

# The device's security-event record (lib/ironclad/ironclad/events.py,
# docs/events.md), decoded here independently of the device code.
EVENT_SIZE = 128
OUTCOMES = ("info", "rejected", "failed", "ok")


def decode_event(rec):
    """A 128-byte event record -> dict, or None when it is malformed or its
    own hash does not match (altered)."""
    rec = bytes(rec)
    if len(rec) != EVENT_SIZE or rec[:3] != b"EV\x01":
        return None
    if hashlib.sha256(rec[96:112] + rec[:96]).digest()[:16] != rec[112:]:
        return None
    oc, seq, ms, wall, lk, lr, ld = struct.unpack_from("<BIIIBBB", rec, 3)
    if oc >= len(OUTCOMES) or seq == 0 or 19 + lk + lr + ld > 96:
        return None
    o = 19
    try:
        kind, reason, detail = (rec[o:o + lk].decode(), rec[o + lk:o + lk + lr].decode(),
                                rec[o + lk + lr:o + lk + lr + ld].decode())
    except UnicodeDecodeError:
        return None
    return {"seq": seq, "kind": kind, "reason": reason, "outcome": OUTCOMES[oc], "detail": detail,
            "ms": ms, "wall": wall, "prev": rec[96:112], "hash": rec[112:]}


def _load_cert(cert):
    """An x509 certificate from DER/PEM bytes (or as it is); OpenError if not one."""
    if isinstance(cert, (bytes, bytearray)):
        try:
            return (x509.load_pem_x509_certificate(bytes(cert)) if bytes(cert).startswith(b"-----")
                    else x509.load_der_x509_certificate(bytes(cert)))
        except ValueError:
            raise OpenError("not an X.509 certificate") from None
    return cert


def _per_epoch(marks, epochs):
    """Replay marks keyed "<epoch hex>/<topic kind>"; a state file from before
    they were kept per epoch (keyed by kind alone) applies its marks to every
    epoch it lists."""
    out = {}
    for k, v in marks.items():
        for key in ([k] if "/" in k else ["%s/%s" % (e.hex(), k) for e in epochs]):
            out[key] = v
    return out


def _looks_like_hello(payload):
    # A hello is a CBOR map (0xA0..0xB7) and "online"/"offline" are not:
    # accepted on state itself too, for an agent that publishes it there.
    return bool(payload) and 0xA0 <= payload[0] <= 0xB7


class OpenError(Exception):
    """A payload that does not open: malformed, forged, or under a key we lack."""


# What cbor2 raises on hostile input besides its own errors: TypeError (an
# unhashable map key), ArithmeticError (decimal.InvalidOperation from a
# decimal-fraction tag, OverflowError), RecursionError (deep nesting).
_CBOR_ERRORS = (cbor2.CBORDecodeError, ValueError, TypeError, ArithmeticError, RecursionError)


def _cbor(data, what="payload"):
    """cbor2.loads, every failure an OpenError: the bytes come from the broker."""
    try:
        return cbor2.loads(data)
    except _CBOR_ERRORS as e:
        raise OpenError("%s is not CBOR: %s" % (what, type(e).__name__)) from None


def _nonce(base_iv, piv):
    n = bytearray(base_iv)
    off = len(n) - len(piv)
    for i, b in enumerate(piv):
        n[off + i] ^= b
    return bytes(n)


def open_encrypt0(key, base_iv, msg, external_aad):
    """COSE_Encrypt0 with AES-CCM-16-64-128 and a Partial IV -> (counter,
    plaintext). Raises OpenError."""
    obj = _cbor(msg, "message")
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != 16:
            raise OpenError("not a COSE_Encrypt0")
        obj = obj.value
    if not isinstance(obj, list) or len(obj) != 3:
        raise OpenError("not a COSE_Encrypt0")
    prot, unprot, ct = obj
    if prot != PROTECTED or not isinstance(unprot, dict) or not isinstance(ct, bytes):
        raise OpenError("not AES-CCM-16-64-128 with the expected headers")
    piv = unprot.get(6)
    if not isinstance(piv, bytes) or not 1 <= len(piv) <= 13 or 5 in unprot:
        raise OpenError("no Partial IV")
    aad = cbor2.dumps(["Encrypt0", prot, external_aad])
    try:
        pt = AESCCM(key, tag_length=8).decrypt(_nonce(base_iv, piv), ct, aad)
    except InvalidTag:
        raise OpenError("does not open (forged, or sealed for another topic or key)") from None
    return int.from_bytes(piv, "big"), pt


def seal_encrypt0(key, base_iv, counter, plaintext, external_aad):
    """The sealing side of open_encrypt0 (commands)."""
    piv = counter.to_bytes(max(1, (counter.bit_length() + 7) // 8), "big")
    aad = cbor2.dumps(["Encrypt0", PROTECTED, external_aad])
    ct = AESCCM(key, tag_length=8).encrypt(_nonce(base_iv, piv), plaintext, aad)
    return cbor2.dumps(cbor2.CBORTag(16, [PROTECTED, {6: piv}, ct]))


class Message:
    """One thing the console saw: kind is telemetry, events, state, reply or
    alarm (a check failed: forged payload, broken event chain, replay...).
    body: the decoded payload (for events: the one record, whose chain link
    checked; records: [that record]); counter: the message's Partial IV."""

    def __init__(self, device, kind, text, body=None, counter=None, records=None):
        self.device = device
        self.kind = kind
        self.text = text
        self.body = body
        self.counter = counter
        self.records = records or []
        self.time = time.time()

    @property
    def alarm(self):
        return self.kind == "alarm"

    def __str__(self):
        t = time.strftime("%H:%M:%S", time.localtime(self.time))
        return "%s %-12s %-9s %s" % (t, self.device, "ALARM" if self.alarm else self.kind, self.text)

    def __repr__(self):
        return "<Message %s %s %s>" % (self.device, self.kind, self.text)


def _fmt_reading(body):
    # key=str: a compromised device's map may mix key types, which sorted() refuses.
    return " ".join("%s=%s" % (k, body[k]) for k in sorted(body, key=str) if k != "id")


def _fmt_event(r):
    s = "#%d %s/%s %s" % (r["seq"], r["kind"], r["reason"], r["outcome"])
    if r["detail"]:
        s += " (%s)" % r["detail"]
    return s


def device_state_json(d):
    """What the console remembers of one device, as JSON-able data (the
    state file; the fleet service keeps it in its database)."""
    return {"pub": d["pub"].hex(), "serial": d["serial"], "nb": d["nb"], "old": d["old"],
            "epochs": [e.hex() for e in d["epochs"]],
            "events": [d["events"][0], d["events"][1].hex()] if d["events"] else None,
            "evh": {str(k): v.hex() for k, v in d["evh"].items()},
            "cmd": d["cmd"], "high": d["high"], "recent": d["recent"]}


def device_state_from_json(d):
    """The inverse of device_state_json (KeyError/ValueError/TypeError if
    damaged); a state from before the replay marks were kept per key epoch
    applies its marks to every epoch it lists (_per_epoch)."""
    epochs = [bytes.fromhex(e) for e in d.get("epochs", [])]
    return {"pub": bytes.fromhex(d["pub"]),
            "serial": d.get("serial"),
            "nb": d.get("nb"),
            "old": list(d.get("old", [])),
            "epochs": epochs,
            "events": (d["events"][0], bytes.fromhex(d["events"][1])) if d.get("events") else None,
            "evh": {int(k): bytes.fromhex(v) for k, v in d.get("evh", {}).items()},
            "cmd": d.get("cmd", 0),
            "high": _per_epoch(d.get("high", {}), epochs),
            "recent": {k: list(v) for k, v in _per_epoch(d.get("recent", {}), epochs).items()},
            "keys": {}}


class Console:
    """See the module docstring. host/port/ca_path/cert_path/key_path: the
    broker and the operator's TLS identity; fleet_key: the fleet data
    private key (a cryptography key object)."""

    def __init__(self, host, port, ca_path, cert_path, key_path, fleet_key, prefix="ironclad",
                 state_path=None, client_id=pki.CONSOLE_ID, crl_path=None, inventory_path=None):
        self.host = host
        self.port = port
        self.ca_path = ca_path
        self.cert_path = cert_path
        self.key_path = key_path
        self.fleet_key = fleet_key
        self.prefix = prefix
        self.client_id = client_id
        self.ca_cert = pki.load_cert(ca_path)
        # The CA's revocation list and inventory, beside its certificate by
        # default (`ictl ca revoke` writes both); either may be absent.
        ca_dir = os.path.dirname(os.path.abspath(ca_path))
        self.crl_path = crl_path or os.path.join(ca_dir, pki.CRL)
        self.inventory_path = inventory_path or os.path.join(ca_dir, fleet_ca.INVENTORY)
        self._crl = (None, frozenset(), None)  # (file mtime and size, revoked serials, nextUpdate)
        self.guard = Guard()
        self.state_path = state_path
        self.devices = {}
        self._lock = threading.Lock()
        self._q = queue.Queue()
        self._client = None
        self._connected = threading.Event()
        self._load_state()

    @classmethod
    def for_broker(cls, broker, fleet_key, state_path=None):
        """A console for an ictl.broker.Broker (its CA, console certificate,
        address and prefix)."""
        kp, cp = pki.ensure_console_cert(pki.load_ca(broker.pki_dir))
        return cls(broker.host, broker.port, broker.ca_path, cp, kp, fleet_key, broker.prefix, state_path)

    # ------------------------------------------------------------ state
    def _load_state(self):
        if not self.state_path or not os.path.exists(self.state_path):
            return
        try:
            with open(self.state_path) as f:
                data = json.load(f)
            for dev, d in data.get("devices", {}).items():
                self.devices[dev] = device_state_from_json(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ToolError("console state %s is unreadable (%s): move it away to start afresh" % (self.state_path, e))

    def _save_state(self):
        if not self.state_path:
            return
        data = {"devices": {dev: device_state_json(d) for dev, d in self.devices.items()}}
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_path)

    def _device(self, dev, pub, serial=None, nb=None):
        """The device's record, with pub as its key. A new key (a re-provisioned
        device) keeps the history: the event chain, the replay high-water
        marks and hash window belong to the id, and whoever can publish a
        hello must not be able to wipe them (issue 14). The replaced key is
        remembered and never taken back."""
        d = self.devices.get(dev)
        if d is None:
            d = {"pub": pub, "serial": serial, "nb": nb, "old": [], "epochs": [], "events": None, "evh": {},
                 "cmd": 0, "high": {}, "recent": {}, "keys": {}}
            self.devices[dev] = d
        elif d["pub"] != pub:
            d["old"] = (d["old"] + [d["pub"].hex()])[-MAX_OLD_KEYS:]
            d["pub"], d["keys"] = pub, {}
        if serial is not None:
            d["serial"], d["nb"] = serial, nb
        return d

    def add_device(self, device_id, cert_or_point, epoch=None):
        """Register a device from its certificate (DER/PEM bytes or object,
        checked against the fleet CA) or a trusted 65-byte public point."""
        pki.validate_device_id(device_id)
        if isinstance(cert_or_point, (bytes, bytearray)) and len(cert_or_point) == 65:
            pub = bytes(cert_or_point)
            fleetkeys.device_public(pub)
            serial = nb = None
        else:
            cert = _load_cert(cert_or_point)
            pub = self._check_cert(device_id, cert)
            serial, nb = fleet_ca.serial_hex(cert), int(cert.not_valid_before_utc.timestamp())
        with self._lock:
            d = self._device(device_id, pub, serial, nb)
            if epoch is not None:
                self._add_epoch(d, bytes(epoch))
            self._save_state()

    def _check_cert(self, dev, cert):
        cert = _load_cert(cert)
        if cert.issuer != self.ca_cert.subject:
            raise OpenError("certificate not issued by the fleet CA")
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (InvalidSignature, ValueError, TypeError):
            raise OpenError("certificate signature does not verify with the fleet CA")
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise OpenError("certificate expired or not yet valid")
        if pki.subject_cn(cert) != dev:
            raise OpenError("certificate is for %r, not %r" % (pki.subject_cn(cert), dev))
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise OpenError("certificate key is not P-256")
        return fleetkeys.public_point(pub)

    def _revoked(self):
        """The serials (hex) on the CA's CRL, read again whenever the file
        changes; OpenError when the CRL is there but not the CA's."""
        try:
            st = os.stat(self.crl_path)
        except FileNotFoundError:
            return frozenset()
        stamp = (st.st_mtime_ns, st.st_size)
        if self._crl[0] != stamp:
            try:
                with open(self.crl_path, "rb") as f:
                    crl = x509.load_pem_x509_crl(f.read())
                valid = crl.issuer == self.ca_cert.subject and crl.is_signature_valid(self.ca_cert.public_key())
            except (OSError, ValueError, TypeError):
                valid = False
            if not valid:
                raise OpenError("the CRL %s is not the fleet CA's: no certificate can be checked" % self.crl_path)
            self._crl = (stamp, frozenset("%x" % r.serial_number for r in crl), crl.next_update_utc)
        # A CRL past its nextUpdate says nothing of what was revoked since
        # (RFC 5280 6.3.3): fail closed, as the broker's OpenSSL does for the
        # same file (X509_V_ERR_CRL_HAS_EXPIRED refuses every client).
        due = self._crl[2]
        if due is not None and datetime.datetime.now(datetime.timezone.utc) > due:
            raise OpenError("the CRL %s expired at %s: run `ictl ca crl` to issue a fresh one"
                            % (self.crl_path, due.isoformat()))
        return self._crl[1]

    def _superseded(self, dev, serial):
        """Why the CA's inventory says this certificate is no longer the
        device's (revoked, or a newer live one was issued), or None. A
        certificate for an id the inventory does not know gets no verdict
        here (devices certified before the inventory, simulations); one the
        CA did not record for an id it did certify is refused: every
        certificate `ictl provision` or `ictl ca sign` issues is recorded, so
        it was issued behind the inventory's back."""
        try:
            rows = [r for r in fleet_ca.Inventory(self.inventory_path).devices().values() if r.get("device_id") == dev]
        except ToolError as e:
            raise OpenError(str(e)) from None
        mine = [i for i, r in enumerate(rows) if r.get("serial") == serial]
        if not mine:
            return "not in the CA's inventory, which lists other certificates for this device" if rows else None
        if rows[mine[0]].get("status") == "revoked":
            return "revoked in the CA's inventory"
        if any(r.get("status") in ("issued", "provisioned") for r in rows[mine[0] + 1:]):
            return "superseded: the CA issued this device a newer certificate"
        return None

    def _trusted(self, dev, d, cert, pub):
        """Refuse a checked certificate that is revoked or superseded."""
        serial = fleet_ca.serial_hex(cert)
        if serial in self._revoked():
            raise OpenError("certificate serial %s is revoked (the CA's CRL)" % serial)
        why = self._superseded(dev, serial)
        if why:
            raise OpenError("certificate serial %s: %s" % (serial, why))
        if d is None or d["pub"] == pub:
            return
        if pub.hex() in d["old"]:
            raise OpenError("certificate serial %s carries a key this device replaced: superseded" % serial)
        nb = int(cert.not_valid_before_utc.timestamp())
        if d["nb"] is not None and nb < d["nb"]:
            raise OpenError("certificate serial %s is older than the one in use (serial %s): superseded"
                            % (serial, d["serial"]))

    def _add_epoch(self, d, epoch):
        if epoch in d["epochs"]:
            d["epochs"].remove(epoch)
        d["epochs"].insert(0, epoch)  # newest first
        while len(d["epochs"]) > MAX_EPOCHS:
            # The oldest epoch no message ever opened under goes first: the
            # broker can republish a device's hello with made-up epochs, and
            # those must not push out the one the device really seals under.
            used = {k.split("/", 1)[0] for k in d["high"]}
            idle = [e for e in d["epochs"][1:] if e.hex() not in used]
            d["epochs"].remove(idle[-1] if idle else d["epochs"][-1])

    def _keys(self, dev, d, epoch, direction):
        k = d["keys"].get((epoch, direction))
        if k is None:
            z = fleetkeys.shared_secret(self.fleet_key, d["pub"])
            k = fleetkeys.derive(z, epoch, direction, dev)
            d["keys"][(epoch, direction)] = k
        return k

    # ------------------------------------------------------------ MQTT
    def topic(self, device_id, kind):
        return "%s/%s/%s" % (self.prefix, device_id, kind)

    def start(self, timeout=10):
        """Connect (mutual TLS, persistent session: QoS 1 messages sent while
        the console was away are delivered when it returns) and subscribe."""
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False)
        c.tls_set(ca_certs=self.ca_path, certfile=self.cert_path, keyfile=self.key_path,
                  cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self.guard.wrap(self._on_connect)
        c.on_message = self.guard.wrap(self._on_message)
        c.on_subscribe = self.guard.wrap(self._on_subscribe)
        c.on_disconnect = self.guard.wrap(lambda cl, ud, fl, rc, props: self._connected.clear())
        c.reconnect_delay_set(0.2, 5)
        self._client = c
        try:
            c.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise ToolError("console cannot reach the broker at %s:%d: %s" % (self.host, self.port, e)) from None
        c.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise ToolError("console: no MQTT session with %s:%d within %ds" % (self.host, self.port, timeout))
        return self

    def _on_connect(self, client, userdata, flags, rc, props):
        if rc.is_failure:
            self._q.put(Message("-", "alarm", "broker refused the console: %s" % rc))
            return
        # "state/#" also matches state itself (the agent's online/offline).
        client.subscribe([("%s/+/%s" % (self.prefix, k + ("/#" if k == "state" else "")), 1) for k in KINDS_IN])

    def _on_subscribe(self, client, userdata, mid, codes, props):
        # Ready once the broker has confirmed the subscriptions: from here on
        # nothing a device publishes can pass the console by.
        if any(c.is_failure for c in codes):
            self._q.put(Message("-", "alarm", "broker refused a console subscription: %s" % codes))
            return
        self._connected.set()

    def alive(self):
        """True while paho's network thread runs."""
        t = getattr(self._client, "_thread", None)
        return t is not None and t.is_alive()

    def stop(self):
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _on_message(self, client, userdata, msg):
        try:
            for m in self.handle(msg.topic, msg.payload):
                self._q.put(m)
        except Exception as e:  # a bug here must not kill paho's thread silently
            self._q.put(Message("-", "alarm", "console error on %s: %r" % (msg.topic, e)))

    def get(self, timeout=None):
        """The next Message, or None after timeout seconds."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def run(self, callback, stop=None, idle_timeout=None):
        """Hand every Message to callback until stop (a threading.Event) is
        set; ToolError if nothing arrives for idle_timeout seconds."""
        last = time.monotonic()
        while stop is None or not stop.is_set():
            m = self.get(timeout=0.2)
            if m is None:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    raise ToolError("console: nothing from the fleet for %ds" % idle_timeout)
                continue
            last = time.monotonic()
            callback(m)

    # ------------------------------------------------------------ payloads
    def handle(self, topic, payload):
        """Process one received message -> list of Messages (also usable
        without a broker: the tests feed it directly)."""
        parts = topic.split("/")
        pl = self.prefix.count("/") + 1
        if len(parts) < pl + 2 or "/".join(parts[:pl]) != self.prefix:
            return [Message("-", "alarm", "message on unexpected topic %r" % topic)]
        dev, kind = parts[pl], "/".join(parts[pl + 1:])
        with self._lock:
            if kind == HELLO or (kind == "state" and _looks_like_hello(payload)):
                return [self._hello(dev, payload)]
            if kind.startswith("state"):
                # Not sealed (the agent's online/offline and last will).
                return [Message(dev, "state", "%s: %s" % (kind, payload[:80].decode("utf-8", "replace")))]
            d = self.devices.get(dev)
            if d is None or not d["epochs"]:
                return [Message(dev, "alarm", "%s from an unknown device (no state message yet): dropped" % kind)]
            try:
                if d["serial"] is not None and d["serial"] in self._revoked():
                    raise OpenError("sealed under a revoked certificate (serial %s): dropped" % d["serial"])
                epoch, ctr, pt = self._open(dev, d, topic, payload)
                body = _cbor(pt, "plaintext")
            except OpenError as e:
                return [Message(dev, "alarm", "%s: %s" % (kind, e))]
            if not isinstance(body, dict) or body.get("id") != dev:
                return [Message(dev, "alarm", "%s: payload names device %r" % (kind, body.get("id") if isinstance(body, dict) else None))]
            # Per key epoch: a device whose nonce record was lost counts from
            # 0 again under a new epoch (hence new keys; ironclad.nonce).
            dup = self._replay_check(d, epoch.hex() + "/" + kind, ctr)
            if dup:
                return [Message(dev, "alarm" if dup.startswith("replay") else kind, dup, counter=ctr)]
            if kind == "events":
                out = self._events(dev, d, body, ctr)
            elif kind == "reply":
                out = [Message(dev, kind, "command #%s %s%s" % (body.get("cmd"), "ok" if body.get("ok") else "REFUSED",
                                                              (": %s" % (body["reason"],)) if body.get("reason") else ""),
                               body, ctr)]
            else:
                out = [Message(dev, kind, _fmt_reading(body), body, ctr)]
            self._save_state()
            return out

    def _open(self, dev, d, topic, payload):
        err = OpenError("no key epoch opens it")
        for epoch in d["epochs"]:
            key, iv = self._keys(dev, d, epoch, fleetkeys.UP)
            try:
                return (epoch,) + open_encrypt0(key, iv, payload, topic.encode())
            except OpenError as e:
                err = e
        raise err

    def _replay_check(self, d, kind, ctr):
        # Per topic, a device's counters rise (the spool delivers in order).
        # At or below the highest seen: a QoS 1 redelivery when we saw that
        # very counter, else something replayed or held back.
        high = d["high"].get(kind, -1)
        recent = d["recent"].setdefault(kind, [])
        if ctr <= high:
            if ctr in recent:
                return "duplicate of #%d (QoS 1 redelivery): dropped" % ctr
            return "replayed or reordered: #%d after #%d: dropped" % (ctr, high)
        d["high"][kind] = ctr
        recent.append(ctr)
        del recent[:-DUP_WINDOW]
        return None

    def _hello(self, dev, payload):
        if not payload:
            return Message(dev, "state", "hello cleared")
        try:
            st = _cbor(payload, "hello")
        except OpenError:
            st = None
        if not isinstance(st, dict) or not isinstance(st.get("cert"), bytes) or not isinstance(st.get("epoch"), bytes):
            return Message(dev, "alarm", "hello without certificate and key epoch: ignored")
        try:
            pki.validate_device_id(dev)
            cert = _load_cert(st["cert"])
            pub = self._check_cert(dev, cert)
            old = self.devices.get(dev)
            self._trusted(dev, old, cert, pub)
        except (OpenError, ToolError) as e:
            return Message(dev, "alarm", "state: %s: device not registered" % e)
        if len(st["epoch"]) != 8:
            return Message(dev, "alarm", "state: bad key epoch")
        serial = fleet_ca.serial_hex(cert)
        changed = old is not None and old["pub"] != pub
        was = old["serial"] if changed else None
        d = self._device(dev, pub, serial, int(cert.not_valid_before_utc.timestamp()))
        # The epochs of the device's last boots (a new one every boot), for
        # readings it spooled before a reboot; oldest first, so the current
        # epoch stays the newest.
        prev = st.get("prev")
        if isinstance(prev, list):
            for e in reversed(prev[:MAX_EPOCHS - 1]):
                if isinstance(e, bytes) and len(e) == 8:
                    self._add_epoch(d, e)
        self._add_epoch(d, st["epoch"])
        self._save_state()
        if changed:
            return Message(dev, "alarm", "key changed: certificate serial %s replaces %s (re-provisioned, or someone "
                           "else holds a key for this id); event chain and replay marks kept" % (serial, was), st)
        return Message(dev, "state", "online: certificate ok, key epoch %s" % st["epoch"].hex(), st)

    def _events(self, dev, d, body, ctr):
        recs = body.get("ev")
        if not isinstance(recs, list) or not all(isinstance(r, bytes) for r in recs):
            return [Message(dev, "alarm", "events: malformed payload")]
        out = []
        for raw in recs:
            r = decode_event(raw)
            if r is None:
                out.append(Message(dev, "alarm", "event record altered (its hash does not match)"))
                continue
            last = d["events"]
            if last is None:
                note = "" if r["seq"] == 1 and r["prev"] == bytes(16) else " (chain starts here: earlier records not seen)"
                if r["seq"] == 1 and r["prev"] != bytes(16):
                    out.append(Message(dev, "alarm", "event #1 does not start a chain"))
                    continue
                out.append(Message(dev, "events", _fmt_event(r) + note, r, ctr, [r]))
            elif r["seq"] <= last[0]:
                known = d["evh"].get(r["seq"])
                if known == r["hash"]:
                    continue  # resent (a QoS 1 redelivery, or the device's sent mark lagged)
                if known is None:
                    out.append(Message(dev, "alarm", "event #%d again after #%d: the log was reset or replayed"
                                       % (r["seq"], last[0])))
                else:
                    out.append(Message(dev, "alarm", "event #%d rewritten: differs from the one received before" % r["seq"]))
                continue
            elif r["seq"] == last[0] + 1:
                if r["prev"] != last[1]:
                    out.append(Message(dev, "alarm", "event chain broken before #%d: a record was altered or replaced" % r["seq"]))
                else:
                    out.append(Message(dev, "events", _fmt_event(r), r, ctr, [r]))
            else:
                out.append(Message(dev, "alarm", "events #%d..#%d missing: removed, or overwritten on the device before they were sent"
                                   % (last[0] + 1, r["seq"] - 1)))
                out.append(Message(dev, "events", _fmt_event(r), r, ctr, [r]))
            d["events"] = (r["seq"], r["hash"])
            d["evh"][r["seq"]] = r["hash"]
            if len(d["evh"]) > EVENT_WINDOW:
                del d["evh"][min(d["evh"])]
        return out

    # ------------------------------------------------------------ commands
    def command(self, device_id, op, **args):
        """(topic, message, counter) of an authenticated command, the counter
        recorded first. The counter is max(last + 1, Unix time in us): it
        keeps rising even if this state file is lost."""
        with self._lock:
            d = self.devices.get(device_id)
            if d is None or not d["epochs"]:
                raise ToolError("device %s is unknown to this console (no state message received)" % device_id)
            ctr = max(d["cmd"] + 1, time.time_ns() // 1000)
            d["cmd"] = ctr
            self._save_state()
            key, iv = self._keys(device_id, d, d["epochs"][0], fleetkeys.DOWN)
        body = dict(args, op=op, iat=int(time.time()))
        topic = self.topic(device_id, "cmd")
        return topic, seal_encrypt0(key, iv, ctr, cbor2.dumps(body), topic.encode()), ctr

    def wait_device(self, device_id, timeout=5):
        """True once the device's keys are known (its retained hello arrives
        just after start()), False after timeout seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                d = self.devices.get(device_id)
                if d is not None and d["epochs"]:
                    return True
            time.sleep(0.05)
        return False

    def send_command(self, device_id, op, timeout=10, **args):
        """Seal and publish a command (QoS 1, waits for the broker's PUBACK).
        Returns its counter; the device answers on its reply topic."""
        if self._client is None:
            raise ToolError("console not started")
        topic, msg, ctr = self.command(device_id, op, **args)
        info = self._client.publish(topic, msg, qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ToolError("command to %s not acknowledged by the broker within %ds" % (device_id, timeout))
        return ctr
