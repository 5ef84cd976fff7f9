"""Signed, encrypted updates on the host: create (full or detools delta, one
device or a group), save/load, and roll out over the broker. The format is
docs/updates.md; the device side is lib/ironclad/ironclad/update.py.

    upd = Update.create(new_image, base=old_image)          # delta (app)
    msg = upd.metadata(device_id, device_pub, key, key_id)   # per device, signed
    upd.chunk(i)                                             # the same for all

The content key lives only in memory: it is wrapped for each device when its
metadata is made, and never written to disk."""
import hashlib
import io
import json
import os
import re
import secrets
import ssl
import struct
import sys
import threading
import time

import cbor2
import detools
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography import x509

from ictl import ToolError
from ictl import image as app_image
from ictl.guard import Guard

CHUNK = 4096
TAG = 16
ID_LEN = 16
FORMAT = 1
ALG_PS256 = -37
COMPRESSIONS = ("heatshrink", "crle", "none")
DEFAULT_TTL = 30 * 24 * 3600
UPDATER_ID = "fleet-updates"  # the operator identity rollouts connect as
REPORT_KIND = "state/update"  # devices report on <prefix>/<id>/state/update
MAX_MESSAGE = 1 + ID_LEN + 4 + CHUNK + TAG  # the largest update message (a chunk)
# What a device reports (lib/ironclad/ironclad/update.py: the report states,
# WINDOW = the chunks it asks for at a time). Reports are JSON of ~100 bytes.
STATES = ("idle", "downloading", "applied", "trial", "confirmed", "rolled_back", "rejected")
WINDOW = 8
MAX_REPORT = 1024
# Chunks served to one device for one update before its requests are rationed
# (a window at most every THROTTLE_S): an honest device fetches each chunk
# about once, more only after power cuts (resume from a checkpoint) or lost
# windows; a compromised one asking for windows in a loop would otherwise
# make the rollout send it the update again and again, crowding the others.
SERVE_FACTOR = 4
THROTTLE_S = 5.0
_WORD = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")
_HEX_ID = re.compile(r"^[0-9a-f]{%d}$" % (2 * ID_LEN))


def _nonce(index):
    return b"\x00" * 9 + struct.pack(">I", index)


def _aad(uid, index):
    return b"ICUC" + uid + struct.pack(">I", index)


def chain(patch):
    """The chained patch digest (docs/updates.md), as the device computes it."""
    d = bytes(32)
    for i in range(0, len(patch), CHUNK):
        d = hashlib.sha256(d + patch[i:i + CHUNK]).digest()
    return d


def make_patch(base, new, compression="heatshrink", window=8, lookahead=7):
    """A detools sequential patch (bsdiff) from base (b"" for a full image)."""
    if compression not in COMPRESSIONS:
        raise ToolError("compression %r: choose one of %s" % (compression, ", ".join(COMPRESSIONS)))
    out = io.BytesIO()
    try:
        detools.create_patch(io.BytesIO(base), io.BytesIO(new), out, compression=compression,
                             heatshrink_window_sz2=window, heatshrink_lookahead_sz2=lookahead)
    except detools.Error as e:
        raise ToolError("detools: %s" % e)
    return out.getvalue()


def device_public_point(obj):
    """The 65-byte uncompressed P-256 point of a device, from a certificate
    (PEM/DER bytes, a path, an x509 object), a public key, or the point."""
    if isinstance(obj, (bytes, bytearray)) and len(obj) == 65 and obj[0] == 4:
        return bytes(obj)
    if isinstance(obj, str):
        with open(obj, "rb") as f:
            obj = f.read()
    if isinstance(obj, (bytes, bytearray)):
        try:
            obj = x509.load_pem_x509_certificate(bytes(obj)) if b"-----BEGIN" in obj else \
                x509.load_der_x509_certificate(bytes(obj))
        except ValueError as e:
            raise ToolError("not a device certificate: %s" % e)
    if isinstance(obj, x509.Certificate):
        obj = obj.public_key()
    if not isinstance(obj, ec.EllipticCurvePublicKey) or obj.curve.name != "secp256r1":
        raise ToolError("device key must be a P-256 public key")
    return obj.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def kek(z, uid, device_id, epk):
    return HKDF(hashes.SHA256(), 16, uid, b"ironclad update kek " + device_id.encode() + b" " + epk).derive(z)


def sign1(payload, key, key_id):
    """COSE_Sign1 (tag 18) with PS256: RSASSA-PSS SHA-256, MGF1-SHA256, salt 32."""
    prot = cbor2.dumps({1: ALG_PS256, 4: key_id.encode()}, canonical=True)
    tbs = cbor2.dumps(["Signature1", prot, b"", payload])
    sig = key.sign(tbs, app_image.PSS, hashes.SHA256())
    return cbor2.dumps(cbor2.CBORTag(18, [prot, {}, payload, sig]))


class Update:
    """One update: the patch, its encrypted chunks and the fields every
    device's metadata shares. Make it with Update.create."""

    def __init__(self, fields, patch, chunks, key=None):
        self.fields = fields  # the manifest without "dev" and "kw"
        self.patch = patch
        self._chunks = chunks
        self._key = key  # the content key (None once loaded from disk)

    @property
    def id(self):
        return self.fields["id"]

    @property
    def n(self):
        return len(self._chunks)

    @classmethod
    def create(cls, new, base=None, target="app", compression="heatshrink", window=8, lookahead=7,
               version=None, counter=None, hwid=None, base_version=None, iat=None, ttl=DEFAULT_TTL):
        """new, base: the whole images as they sit in a slot (base None: a
        full update, a patch from the empty image). For the app target,
        version, counter, hardware id and base version come from the image
        headers; for firmware they must be given."""
        if target == "app":
            h = app_image.parse_header(new)
            if h["magic"] != app_image.MAGIC:
                raise ToolError("the new app image is not a signed Ironclad image")
            version = h["version"] if version is None else version
            counter = h["counter"] if counter is None else counter
            hwid = hwid or h["hwid"]
            if base is not None and base_version is None:
                base_version = app_image.parse_header(base)["version"]
        elif target == "fw":
            if version is None or counter is None or not hwid:
                raise ToolError("a firmware update needs --version, --counter and --hwid")
            if not new[:1] == b"\xe9":
                raise ToolError("the new firmware is not an ESP app image (first byte 0xE9)")
        else:
            raise ToolError("target must be app or fw")
        patch = make_patch(base or b"", new, compression, window, lookahead)
        base_f = None if base is None else {"len": len(base), "sha": hashlib.sha256(base).digest(),
                                            "ver": base_version or 0}
        result = {"len": len(new), "sha": hashlib.sha256(new).digest()}
        return cls.seal(patch, target, hwid, version, counter, base_f, result, compression, iat, ttl)

    @classmethod
    def seal(cls, patch, target, hwid, version, counter, base, result, compression, iat=None, ttl=DEFAULT_TTL):
        """An update from a patch and the manifest's fields as they are (the
        tests use it to make signed but hostile updates)."""
        uid = secrets.token_bytes(ID_LEN)
        key = AESCCM.generate_key(128)
        aead = AESCCM(key, tag_length=TAG)
        chunks = [aead.encrypt(_nonce(i), patch[i * CHUNK:(i + 1) * CHUNK], _aad(uid, i))
                  for i in range((len(patch) + CHUNK - 1) // CHUNK)]
        iat = int(time.time()) if iat is None else iat
        fields = {
            "v": FORMAT, "id": uid, "target": target, "hwid": hwid, "ver": version, "ctr": counter,
            "iat": iat, "exp": iat + ttl, "base": base,
            "patch": {"len": len(patch), "chain": chain(patch), "comp": compression},
            "result": result, "chunk": CHUNK, "n": len(chunks),
        }
        return cls(fields, patch, chunks, key)

    def wrap_for(self, device_id, device_pub):
        """ECDH-ES: a fresh ephemeral P-256 key per device, HKDF-SHA256, AES key wrap."""
        if self._key is None:
            raise ToolError("this update was loaded from disk: its content key is gone; create it again")
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), device_public_point(device_pub))
        eph = ec.generate_private_key(ec.SECP256R1())
        epk = eph.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        z = eph.exchange(ec.ECDH(), pub)
        return {"epk": epk, "wk": aes_key_wrap(kek(z, self.id, device_id, epk), self._key)}

    def metadata(self, device_id, device_pub, signing_key, key_id):
        """The signed metadata message for one device (b"M" + COSE_Sign1)."""
        m = dict(self.fields, dev=device_id, kw=self.wrap_for(device_id, device_pub))
        return b"M" + sign1(cbor2.dumps(m, canonical=True), signing_key, key_id)

    def chunk(self, i):
        """Chunk message i (b"C" + id + index + ciphertext||tag)."""
        return b"C" + self.id + struct.pack(">I", i) + self._chunks[i]

    def summary(self):
        f = self.fields
        return {"id": f["id"].hex(), "target": f["target"], "version": f["ver"], "counter": f["ctr"],
                "hwid": f["hwid"], "kind": "full" if f["base"] is None else "delta",
                "compression": f["patch"]["comp"], "patch_bytes": f["patch"]["len"],
                "result_bytes": f["result"]["len"], "chunks": f["n"],
                "base_sha256": f["base"]["sha"].hex() if f["base"] else None,
                "expires": f["exp"]}

    def mqtt_bytes(self):
        """Payload bytes all chunks take on the wire."""
        return sum(len(self.chunk(i)) for i in range(self.n))

    # -- files -----------------------------------------------------------------

    def save(self, out, metas):
        """out/update.json, out/chunks.bin, out/meta/<device>.bin. No key."""
        os.makedirs(os.path.join(out, "meta"), exist_ok=True)
        with open(os.path.join(out, "update.json"), "w") as f:
            json.dump(dict(self.summary(), devices=sorted(metas)), f, indent=1)
        with open(os.path.join(out, "fields.cbor"), "wb") as f:
            f.write(cbor2.dumps(self.fields, canonical=True))
        with open(os.path.join(out, "chunks.bin"), "wb") as f:
            for c in self._chunks:
                f.write(struct.pack(">I", len(c)) + c)
        for dev, msg in metas.items():
            with open(os.path.join(out, "meta", dev + ".bin"), "wb") as f:
                f.write(msg)

    @classmethod
    def load(cls, path):
        """(Update without its key, {device: metadata message})."""
        try:
            with open(os.path.join(path, "fields.cbor"), "rb") as f:
                fields = cbor2.loads(f.read())
            chunks = []
            with open(os.path.join(path, "chunks.bin"), "rb") as f:
                while True:
                    hd = f.read(4)
                    if not hd:
                        break
                    n = struct.unpack(">I", hd)[0] if len(hd) == 4 else -1
                    c = f.read(n) if 0 < n <= CHUNK + TAG else b""
                    if len(c) != n:  # a truncated or damaged file: refused, never sent short
                        raise ValueError("chunks.bin is truncated or damaged at chunk %d" % len(chunks))
                    chunks.append(c)
            if not isinstance(fields, dict) or fields.get("n") != len(chunks) or not isinstance(fields.get("id"), bytes):
                raise ValueError("fields.cbor does not describe the %d chunks in chunks.bin" % len(chunks))
            metas = {}
            for fn in sorted(os.listdir(os.path.join(path, "meta"))):
                if fn.endswith(".bin"):
                    with open(os.path.join(path, "meta", fn), "rb") as f:
                        metas[fn[:-4]] = f.read()
                    if metas[fn[:-4]][:1] != b"M":
                        raise ValueError("meta/%s is not a metadata message" % fn)
        except (OSError, ValueError, cbor2.CBORDecodeError) as e:
            raise ToolError("%s is not an update made by `ictl update create`: %s" % (path, e))
        return cls(fields, None, chunks), metas


def create_for(devices, new, base, signing_key, key_id, **kw):
    """A delta (when base is given) and a full update for devices
    [(id, certificate or public point)]: (delta or None, full, metadata
    {"delta": {id: msg}, "full": {id: msg}})."""
    full = Update.create(new, None, **kw)
    delta = Update.create(new, base, **kw) if base is not None else None
    metas = {"full": {}, "delta": {}}
    for dev, pub in devices:
        metas["full"][dev] = full.metadata(dev, pub, signing_key, key_id)
        if delta:
            metas["delta"][dev] = delta.metadata(dev, pub, signing_key, key_id)
    return delta, full, metas


# ---------------------------------------------------------------- rollout

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_report(payload, n):
    """A device's report (the payload bytes), checked field by field against
    an update of n chunks -> a dict of only the fields the rollout uses, or
    ValueError saying what is wrong. Nothing a device says is trusted: one
    compromised device must not stop the rollout of the others (issue 14)."""
    if len(payload) > MAX_REPORT:
        raise ValueError("report of %d bytes" % len(payload))
    try:
        rep = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError("not JSON") from None
    if not isinstance(rep, dict):
        raise ValueError("not a JSON object")
    state = rep.get("state")
    if state not in STATES:
        raise ValueError("unknown state %.40r" % (state,))
    out = {"state": state}
    uid = rep.get("id")
    if uid is not None:
        if not isinstance(uid, str) or not _HEX_ID.match(uid):
            raise ValueError("id %.40r is not an update id" % (uid,))
        out["id"] = uid
    for k in ("reason", "slot", "ver"):
        v = rep.get(k)
        if v is None:
            continue
        if not (isinstance(v, str) and _WORD.match(v) or k == "ver" and _is_int(v) and 0 <= v < 1 << 32):
            raise ValueError("%s %.40r" % (k, v))
        out[k] = v
    pct = rep.get("pct")
    if pct is not None:
        if not _is_int(pct) or not 0 <= pct <= 100:
            raise ValueError("pct %.40r not in 0..100" % (pct,))
        out["pct"] = pct
    if state == "downloading":
        first, want = rep.get("next"), rep.get("want")
        if not _is_int(first) or not 0 <= first < n:
            raise ValueError("next %.40r not in 0..%d" % (first, n - 1))
        if not _is_int(want) or not 1 <= want <= min(WINDOW, n - first):
            raise ValueError("want %.40r not in 1..%d" % (want, min(WINDOW, n - first)))
        out.update(next=first, want=want)
    return out


class Rollout:
    """Publishes updates through the broker and serves the devices' chunk
    requests: each device gets its metadata, asks for windows of chunks
    (report "downloading" with next/want), and reports how it went. A device
    that reports base_mismatch gets the full update instead.

    plans: {device id: [(Update, metadata message), ...]} in order of
    preference (delta first, then full)."""

    def __init__(self, host, port, ca, cert, key, prefix="ironclad", client_id=UPDATER_ID, out=None,
                 resend_s=30.0):
        self.host, self.port, self.prefix = host, port, prefix
        self.ca, self.cert, self.key, self.client_id = ca, cert, key, client_id
        self.out = out or sys.stderr
        self.resend_s = resend_s
        self.status = {}  # device -> last report dict (plus "kind")
        self._plans = {}
        self._cur = {}  # device -> index into its plan
        self._sent_at = {}
        self._served = {}  # (device, update id) -> [chunks sent, when the last window went]
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._client = None
        self.bytes_sent = 0
        self.t0 = time.monotonic()
        self.timeline = []  # every report taken: (seconds since t0, device, state, pct, reason)
        self.invalid = {}  # device -> [reports refused (invalid or rationed), the last reason]
        self.guard = Guard()  # callback exceptions (none expected: counted, never fatal)
        self._last_line = None

    def _topic(self, dev, kind):
        return "%s/%s/%s" % (self.prefix, dev, kind)

    def connect(self, timeout=10):
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False)
        c.tls_set(ca_certs=self.ca, certfile=self.cert, keyfile=self.key, cert_reqs=ssl.CERT_REQUIRED)
        up = threading.Event()

        def on_connect(cl, ud, flags, rc, props):
            if not rc.is_failure:
                cl.subscribe("%s/+/%s" % (self.prefix, REPORT_KIND), qos=1)
                up.set()

        c.on_connect = self.guard.wrap(on_connect)
        c.on_message = self.guard.wrap(self._on_message)
        try:
            c.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise ToolError("rollout cannot reach the broker at %s:%d: %s" % (self.host, self.port, e)) from None
        c.loop_start()
        if not up.wait(timeout):
            c.loop_stop()
            raise ToolError("rollout: no MQTT session with %s:%d within %ds (is %s an operator in the broker ACL?)"
                            % (self.host, self.port, timeout, self.client_id))
        self._client = c
        return self

    def close(self):
        c, self._client = self._client, None
        if c:
            c.disconnect()
            c.loop_stop()

    def _publish(self, dev, payload):
        self.bytes_sent += len(payload)
        self._client.publish(self._topic(dev, "update"), payload, qos=1)

    def _send_meta(self, dev):
        upd, meta = self._plans[dev][self._cur[dev]]
        self._sent_at[dev] = time.monotonic()
        self._publish(dev, meta)

    def alive(self):
        """True while paho's network thread runs (a callback that raised
        would have ended it, were it not for the guard)."""
        t = getattr(self._client, "_thread", None)
        return t is not None and t.is_alive()

    def _on_message(self, cl, ud, msg):
        parts = msg.topic.split("/")
        dev = parts[-3] if len(parts) >= 3 else None
        with self._lock:
            if dev not in self._plans:
                return
            upd = self._plans[dev][self._cur[dev]][0]
            try:
                rep = check_report(msg.payload, upd.n)
            except ValueError as e:
                bad = self.invalid.setdefault(dev, [0, ""])
                bad[0] += 1
                bad[1] = str(e)
                return
            if rep.get("id") not in (None, upd.id.hex()):
                return  # about another update
            state = rep.get("state")
            if state == "rejected" and rep.get("reason") == "wrong_update":
                # A stray chunk (a resent window that arrived after the device
                # finished) refused: says nothing about how the update went.
                return
            if self.status[dev].get("state") == "confirmed":
                # Final: a late resend of the metadata refused by a device
                # already on the new image does not undo its confirmation.
                return
            self.timeline.append((time.monotonic() - self.t0, dev, state, rep.get("pct"), rep.get("reason")))
            if state == "idle":
                # The device (re)connected and listens: offer the update now.
                if self.status[dev].get("state") == "sent":
                    self._send_meta(dev)
                return
            if state == "rejected" and rep.get("reason") == "base_mismatch" \
                    and self._cur[dev] + 1 < len(self._plans[dev]):
                self._cur[dev] += 1  # fall back to the full image
                self.status[dev] = {"state": "sent", "kind": "full", "fallback": "base_mismatch"}
                self._send_meta(dev)
            elif state == "downloading":
                self._sent_at[dev] = time.monotonic()
                first, want = rep["next"], rep["want"]  # checked: 0 <= first < first + want <= n
                now = time.monotonic()
                served = self._served.setdefault((dev, upd.id), [0, 0.0])
                if served[0] >= SERVE_FACTOR * upd.n and now - served[1] < THROTTLE_S:
                    bad = self.invalid.setdefault(dev, [0, ""])
                    bad[0] += 1
                    bad[1] = "window requests over %dx the update: rationed" % SERVE_FACTOR
                    return
                served[0] += want
                served[1] = now
                for i in range(first, first + want):
                    self._publish(dev, upd.chunk(i))
                self.status[dev] = dict(rep, kind=self._kind(upd))
            else:
                self.status[dev] = dict(rep, kind=self._kind(upd))
        self._changed.set()

    @staticmethod
    def _kind(upd):
        return "full" if upd.fields["base"] is None else "delta"

    def offer(self, plans):
        """Send each device its metadata and serve what it asks for from
        now on (returns at once; the fleet service drives groups with it)."""
        with self._lock:
            for dev, plan in plans.items():
                self._plans[dev] = plan
                self._cur[dev] = 0
                self.status[dev] = {"state": "sent", "kind": self._kind(plan[0][0])}
                self._send_meta(dev)

    def resend_due(self, devices, final):
        """Offer the metadata again to devices silent for resend_s; True
        when every one of them is in a state of `final`."""
        with self._lock:
            done = all(self.status[d].get("state") in final for d in devices)
            now = time.monotonic()
            for dev in devices:
                s = self.status[dev]
                if s.get("state") not in final and now - self._sent_at.get(dev, now) > self.resend_s:
                    self._send_meta(dev)  # the device was away: offer it again
        return done

    def run(self, plans, until=("applied", "trial", "confirmed"), timeout=300, progress=True):
        """Roll out and wait until every device reached a state in `until`, or
        was rejected/rolled back, or the timeout passed. Returns status."""
        self.offer(plans)
        deadline = time.monotonic() + timeout
        final = set(until) | {"rejected", "rolled_back"}
        while True:
            done = self.resend_due(plans, final)
            if progress:
                self._draw(plans)
            if done or time.monotonic() > deadline:
                break
            self._changed.wait(0.5)
            self._changed.clear()
        if progress:
            self.out.write("\n")
        return {d: self.status[d] for d in plans}

    def _draw(self, plans):
        total = len(plans)
        pct = 0
        for dev in plans:
            s = self.status[dev]
            st = s.get("state")
            pct += 100 if st in ("applied", "trial", "confirmed") else int(s.get("pct", 0))
        pct //= max(total, 1)
        bar = "#" * (pct * 30 // 100)
        states = {}
        for dev in plans:
            states[self.status[dev].get("state")] = states.get(self.status[dev].get("state"), 0) + 1
        line = "rollout [%-30s] %3d%%  %s" % (bar, pct, "  ".join("%s %d" % kv for kv in sorted(states.items())))
        if line != self._last_line:  # redraw only on a change (logs stay readable)
            self._last_line = line
            self.out.write("\r" + line)
            self.out.flush()


def updater_credentials(pki_dir):
    """(key path, cert path) of the rollout's operator identity, issued by
    the fleet CA on first use (CN=fleet-updates)."""
    from ictl import pki

    kp = os.path.join(pki_dir, "updates.key")
    cp = os.path.join(pki_dir, "updates.crt")
    if not (os.path.exists(kp) and os.path.exists(cp)):
        ca = pki.load_ca(pki_dir)
        k = pki.new_key()
        cert = pki.issue_console_cert(ca, k.public_key(), name=UPDATER_ID)
        pki.write_key_pem(kp, k)
        pki.write_cert_pem(cp, cert)
    return kp, cp


def rollout(devices, image_v1, image_v2, broker, signing_key, key_id, compression="heatshrink",
            timeout=300, progress=True, out=None, until=("applied", "trial", "confirmed")):
    """Library entry point for `make run` and the fleet simulation: a delta
    from image_v1 to image_v2 (or a full update when image_v1 is None) for
    devices [(id, certificate or public point)], published through broker
    (an ictl.broker.Broker started with UPDATER_ID among its operators).
    Devices whose base differs get the full image. Returns {device: last
    report} and the MQTT payload bytes sent in "bytes"."""
    delta, full, metas = create_for(devices, image_v2, image_v1, signing_key, key_id, compression=compression)
    plans = {}
    for dev, _ in devices:
        plan = []
        if delta:
            plan.append((delta, metas["delta"][dev]))
        plan.append((full, metas["full"][dev]))
        plans[dev] = plan
    kp, cp = updater_credentials(broker.pki_dir)
    r = Rollout(broker.host, broker.port, broker.ca_path, cp, kp, prefix=broker.prefix, out=out)
    r.connect()
    try:
        status = r.run(plans, until=until, timeout=timeout, progress=progress)
    finally:
        r.close()
    return {"devices": status, "bytes": r.bytes_sent}
