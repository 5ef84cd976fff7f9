"""Host-side stand-ins for devices, for the service's tests and benchmarks.

Each SimDevice has its own P-256 key and a certificate from the fleet CA
(CN = its id), connects to the real broker over mutual TLS as that identity
(so the broker's ACL applies), and publishes exactly what the agent does:
the hello (docs/telemetry.md), readings, event batches and replies sealed
as COSE_Encrypt0 under the device-to-fleet key (tools/ictl/fleetkeys.py),
and plain update reports. They are cheap (hundreds per test), unlike the
unix-port devices of ictl.fleet; what they cannot show is the agent's own
behaviour (spool, reconnects, memory): tests that need it use ictl.fleet.

Development only: the device key is made on the host here."""
import hashlib
import json
import os
import ssl
import struct
import tempfile
import threading

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from ictl import fleetkeys, pki
from ictl.console import OUTCOMES, seal_encrypt0


def event_record(seq, kind, reason, outcome="info", detail="", prev=bytes(16), ms=0, wall=0):
    """A 128-byte security-event record (docs/events.md), hash-linked to prev."""
    k, r, d = kind.encode(), reason.encode(), detail.encode()
    head = b"EV\x01" + struct.pack("<BIIIBBB", OUTCOMES.index(outcome), seq, ms, wall, len(k), len(r), len(d))
    body = (head + k + r + d).ljust(96, b"\x00")
    if len(body) != 96:
        raise ValueError("event fields too long for a record")
    return body + prev + hashlib.sha256(prev + body).digest()[:16]


class SimDevice:
    def __init__(self, ca, fleet_pub, device_id, prefix="ironclad", epoch=None):
        self.id = device_id
        self.prefix = prefix
        self.key = pki.new_key()
        self.cert = pki.issue_client_cert(ca, self.key.public_key(), device_id)
        self.ca = ca
        self.epoch = epoch or os.urandom(8)
        self.fleet_pub = fleet_pub
        self.z = self.key.exchange(ec.ECDH(), fleetkeys.device_public(fleet_pub))
        self.ctr = 0
        self.ev_seq = 0
        self.ev_prev = bytes(16)
        self.seq = 0
        self._client = None
        self._dir = None

    # -- payloads ------------------------------------------------------------
    def topic(self, kind):
        return "%s/%s/%s" % (self.prefix, self.id, kind)

    def hello(self):
        return self.topic("state/keys"), cbor2.dumps({"v": 1, "cert": pki.cert_der(self.cert), "epoch": self.epoch})

    def new_epoch(self):
        """A new key epoch (the agent makes one when its counter block runs out)."""
        self.epoch = os.urandom(8)

    def seal(self, kind, body, counter=None):
        """(topic, sealed message) of body (a dict; "id" is added)."""
        if counter is None:
            self.ctr += 1
            counter = self.ctr
        key, iv = fleetkeys.derive(self.z, self.epoch, fleetkeys.UP, self.id)
        topic = self.topic(kind)
        return topic, seal_encrypt0(key, iv, counter, cbor2.dumps(dict(body, id=self.id)), topic.encode())

    def reading(self, **fields):
        body = {"seq": self.seq, "ts": 0, "temp_c": 21.5, "uptime_ms": 1000 * self.seq}
        body.update(fields)
        self.seq += 1
        return self.seal("telemetry", body)

    def events(self, *specs):
        """One event batch: specs are (kind, reason, outcome, detail) tuples
        chained after the previous records."""
        recs = []
        for kind, reason, outcome, detail in specs:
            self.ev_seq += 1
            rec = event_record(self.ev_seq, kind, reason, outcome, detail, self.ev_prev)
            self.ev_prev = rec[112:]
            recs.append(rec)
        return self.seal("events", {"ev": recs})

    def reply(self, cmd, ok=True, reason=""):
        return self.seal("reply", {"cmd": cmd, "ok": ok, "reason": reason})

    def update_report(self, state, update_id=None, **kw):
        return self.topic("state/update"), json.dumps(dict(kw, state=state, id=update_id)).encode()

    # -- MQTT ----------------------------------------------------------------
    def connect(self, host, port, ca_path, timeout=10, on_message=None):
        """A TLS session as this device (its certificate, the broker's ACL)."""
        import paho.mqtt.client as mqtt
        from cryptography.hazmat.primitives import serialization

        self._dir = tempfile.mkdtemp(prefix="simdev-")
        kp, cp = os.path.join(self._dir, "k.pem"), os.path.join(self._dir, "c.pem")
        with open(os.open(kp, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        with open(cp, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=True)
        c.tls_set(ca_certs=ca_path, certfile=cp, keyfile=kp, cert_reqs=ssl.CERT_REQUIRED)
        up = threading.Event()
        c.on_connect = lambda cl, ud, fl, rc, pr: up.set()
        if on_message:
            c.on_message = on_message
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not up.wait(timeout):
            c.loop_stop()
            raise TimeoutError("device %s: no MQTT session" % self.id)
        self._client = c
        return c

    def publish(self, topic_msg, qos=1, retain=False, wait=True):
        topic, msg = topic_msg
        info = self._client.publish(topic, msg, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(10)
        return info

    def close(self):
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()
        if self._dir:
            import shutil
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
