# Sealing what the device publishes: readings, security events and command
# replies, as COSE_Encrypt0 (AES-CCM-16-64-128) that only the fleet can open.
#
# Keys. Z = ECDH(device key, fleet data public key): the fleet console
# computes the same Z from its private data key and the device's certified
# public key, so no per-device secret is ever shipped. Then
#   key || Base IV = HKDF-SHA256(IKM = Z, salt = epoch,
#                                info = "ironclad v1 <direction> <device id>", 29 bytes)
# with direction "device-to-fleet" (everything the device seals) or
# "fleet-to-device" (commands, ironclad.commands): one key per direction and
# device, so a message can never be reflected back to its sender. The epoch is
# the nonce counter's (ironclad.nonce): a counter lost with its epoch means
# new keys, never a reused nonce.
#
# Message: COSE_Encrypt0 with the counter as Partial IV (label 6) and the
# topic as external AAD, so a message moved to another topic, device or
# direction does not open. Overhead for a 64-byte reading: 19 bytes plus the
# Partial IV (1..5 bytes) = 20..24 (docs/telemetry.md).
#
# Data minimisation: a reading passes an explicit allowlist of field names
# with numeric values; anything else is dropped and counted. The device id
# in a payload is the fleet-assigned pseudonym from the certificate; an id
# that carries the chip's MAC address is refused.
import binascii
from micropython import const

from ironclad import cbor, cose, der, kdf, p256
from ironclad.events import _wall  # Unix seconds, 0 while the clock is not set

UP = b"device-to-fleet"
DOWN = b"fleet-to-device"
_KEY_LEN = const(16)
_IV_LEN = const(13)

# Telemetry fields the device may send (numbers only: no strings, so no
# SSID, MAC or free text can ride along). The agent may pass its own tuple.
FIELDS = ("seq", "uptime_ms", "temp_c", "humidity_pct", "pressure_hpa", "battery_mv",
          "rssi_dbm", "heap_free", "interval_s", "spool_queued", "spool_dropped")
_NUM = (int, float)  # built once: a tuple literal in a call is built per call
_OUT0 = const(160)  # the reused output buffer: fits a reading, grows for event batches
_MAX_EVENTS = const(8)  # event records per message (128 bytes each)


def private_scalar(key):
    """The 32-byte P-256 scalar from a raw scalar or a SEC1 ECPrivateKey DER
    (the keystore's "device_key")."""
    if len(key) == 32:
        return bytes(key)
    end = len(key)
    s, e = der.expect(key, 0, end, 0x30)
    v, pos = der.read_uint(key, s, e, 1)
    if v != 1:
        raise ValueError("not a SEC1 EC private key")
    a, b = der.expect(key, pos, e, 0x04)
    if b - a != 32:
        raise ValueError("not a P-256 private key")
    return bytes(key[a:b])


def shared_secret(device_key, fleet_pub):
    """Z = ECDH(device key, fleet data public key), 32 bytes. Done once per
    boot (the P-256 multiplication is the slow part): pass Z to Sealer and
    commands.Verifier."""
    return p256.ecdh(private_scalar(device_key), bytes(fleet_pub))


def derive(z, epoch, direction, device_id):
    """(16-byte key, 13-byte Base IV) for one direction of one device."""
    if isinstance(device_id, str):
        device_id = device_id.encode()
    okm = kdf.hkdf(z, epoch, b"ironclad v1 " + direction + b" " + device_id, _KEY_LEN + _IV_LEN)
    return okm[:_KEY_LEN], okm[_KEY_LEN:]


def check_pseudonym(device_id):
    """Refuse a device id that carries the chip's MAC (machine.unique_id(),
    the ESP32's base MAC) in hex, with or without separators."""
    import machine

    mac = binascii.hexlify(machine.unique_id()).decode()
    flat = "".join(c for c in device_id.lower() if c not in ":-._")
    # The whole MAC, or its device-specific half (ids like "esp32-a1b2c3").
    if mac in flat or mac[6:] in flat:
        raise ValueError("device id must be a pseudonym, not the MAC address")
    return device_id


# Where hello() goes, under <prefix>/<id>/: a subtopic of state, so the last
# will on <prefix>/<id>/state ("offline") does not replace it.
HELLO = "state/keys"


def hello(cert_der, epoch, previous=()):
    """The message the agent publishes (retained, QoS 1) on
    <prefix>/<id>/state/keys at every connect, before anything sealed: the
    device certificate, from which the console takes the public key (after
    checking it against the fleet CA), and the key epoch, with the epochs
    of the last boots ("prev", newest first: the epoch is new every boot,
    ironclad.nonce, and readings spooled before a reboot are sealed under
    an earlier one). Plain CBOR: none is secret, and a forged one only makes
    the console derive keys that open nothing."""
    m = {"v": 1, "cert": bytes(cert_der), "epoch": bytes(epoch)}
    if previous:
        m["prev"] = [bytes(e) for e in previous]
    return cbor.encode(m)


class Sealer:
    """Seals everything the device publishes, under its device-to-fleet key.

    Long-lived: keeps one Encrypt0 (key schedules, CCM work buffers) and one
    output buffer for readings and one for the rest, so sealing a reading
    allocates only its CBOR encoding."""

    def __init__(self, z, device_id, counter, fields=FIELDS):
        self.device_id = check_pseudonym(device_id)
        self.counter = counter
        key, iv = derive(z, counter.epoch, UP, device_id)
        self._enc = cose.Encrypt0(key, iv)
        self._out = bytearray(_OUT0)
        self._rout = bytearray(_OUT0)  # readings' own: see seal_reading
        self._topic = None  # the last topic and its bytes (the AAD)
        self._topic_b = b""
        self.fields = fields
        self.dropped = 0  # fields dropped by the allowlist since boot
        # A reading's body is written into a reused buffer, keys pre-encoded
        # and in deterministic order (RFC 8949 section 4.2.1: for text keys,
        # shorter first, then bytewise), so a reading allocates nothing.
        # _keys: (field, encoded key) in that order; the id's entry is
        # (None, its key and value), the wall time's ("", its key).
        if "" in fields:
            raise ValueError("empty field name")
        order = sorted(set(fields) | {"id", "ts"}, key=lambda k: (len(k), k))
        keys = []
        for k in order:
            e = cbor.encode(k) + cbor.encode(device_id) if k == "id" else cbor.encode(k)
            keys.append((None if k == "id" else "" if k == "ts" else k, e))
        self._keys = tuple(keys)
        # The map head goes in front once the count is known: 1 byte up to
        # 23 entries, else 2.
        self._at = 1 if len(order) < 24 else 2
        self._body = bytearray(self._at + sum(len(e) + 9 for _, e in keys))

    def seal(self, topic, plaintext, reading=False):
        """Any plaintext -> COSE_Encrypt0 bound to topic: a view of the
        shared output buffer, valid until the next seal. Publish it at once
        (the MQTT client copies what it keeps for a resend). reading=True
        (seal_reading): a view of the readings' own buffer instead."""
        n = len(plaintext) + 32  # header (at most 21 bytes here) and tag
        out = self._rout if reading else self._out
        if n > len(out):
            out = bytearray(n)
            if reading:
                self._rout = out
            else:
                self._out = out
        if topic != self._topic:
            self._topic = topic
            self._topic_b = topic.encode() if isinstance(topic, str) else bytes(topic)
        return self._enc.encrypt_seq(self.counter.next(), plaintext, self._topic_b, out=out)

    def body(self, reading):
        """The reading as it will be sent: allowlisted numeric fields, the
        pseudonymous id and the wall time when known (CBOR, a view of a
        reused buffer)."""
        t = _wall()
        b = self._body
        # Locals: the loop below runs for every field of every reading, and
        # a global or builtin name costs a dictionary lookup (or two) each use.
        get = reading.get
        num = cbor.number_into
        isnum = isinstance
        numeric = _NUM
        ln = len
        pos = self._at
        n = 0  # fields taken from the reading
        for k, e in self._keys:
            if k:
                v = get(k)
                if not isnum(v, numeric):
                    continue  # absent, or not a number
                n += 1
            elif k is None:
                l = ln(e)
                b[pos:pos + l] = e  # "id": key and value
                pos += l
                continue
            elif t:
                v = t
            else:
                continue
            l = ln(e)
            b[pos:pos + l] = e
            pos = num(b, pos + l, v)
        # Everything in the reading that was not taken was dropped.
        self.dropped += len(reading) - n
        n += 2 if t else 1
        start = self._at - (1 if n < 24 else 2)
        cbor.head_into(b, start, 5, n)  # map(n), just before the entries
        return memoryview(b)[start:pos]

    def seal_reading(self, topic, reading):
        """The sealed reading, a view of a buffer only readings use (valid
        until the next reading is sealed): it may wait for its PUBACK while
        a command reply is sealed from inside the MQTT callback, and go to
        the spool if the publish then fails; in the shared buffer it would
        by then hold the reply (issue 14: the console saw a forgery, the
        reading was lost). Replies and event batches are never spooled, and
        the client copies them into its packet before publish returns."""
        return self.seal(topic, self.body(reading), True)

    def seal_events(self, topic, records):
        """Raw security-event records (ironclad.events.raw_since), oldest
        first, at most 8 per message; the console re-checks their chain."""
        if len(records) > _MAX_EVENTS:
            raise ValueError("too many event records for one message")
        return self.seal(topic, cbor.encode({"id": self.device_id, "ev": list(records)}))

    def seal_reply(self, topic, counter, ok, reason=""):
        """The answer to command `counter` (ironclad.commands)."""
        return self.seal(topic, cbor.encode({"id": self.device_id, "cmd": counter, "ok": bool(ok),
                                             "reason": reason[:32]}))


def send_events(sealer, publish, topic, batch=4):
    """Send the stored security events the broker has not acknowledged,
    oldest first, `batch` records per message: publish(msg) must return only
    after the PUBACK (QoS 1), and raise otherwise. The sent mark moves after
    each acknowledged message, so a reconnect resends from there (the console
    drops duplicates by seq). Returns the number of records sent.

    Sends what was recorded when it was called, and stops there: each
    publish waits for its PUBACK and handles the messages that arrive
    meanwhile, which may record more events; under a flood of hostile
    messages "until none is left" never ended, and the agent's loop
    (readings, everything else) starved while the ring overflowed."""
    from ironclad import events

    n = 0
    end = events.head()[0]
    while events.sent() < end:
        recs = events.raw_since(events.sent())[:batch]
        if not recs:
            return n
        publish(sealer.seal_events(topic, recs))
        events.mark_sent(events.decode(recs[-1])["seq"])
        n += len(recs)
    return n
