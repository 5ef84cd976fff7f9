# Authenticated commands from the fleet console to one device.
#
# A command is a COSE_Encrypt0 (AES-CCM-16-64-128) under the device's
# fleet-to-device key (ironclad.telemetry.derive: ECDH + HKDF with its own
# direction label), with
#   Partial IV   the console's command counter: it must be above every counter
#                this device accepted before (it is part of the nonce, so it
#                is authenticated);
#   external AAD the topic <prefix>/<device-id>/cmd;
#   plaintext    CBOR {"op": name, "iat": Unix seconds, <the op's arguments>}.
# Why AEAD and not a signature (COSE_Sign1): opening one costs two AES passes
# in C instead of a pure-Python P-256 verification (a second or more on an
# ESP32, on input anyone on the broker can send), and commands stay
# confidential. The price: the key is shared with the console, so whoever
# holds the fleet data key can command every device (docs/telemetry.md).
#
# Checks, in order, each failure a ("cmd", reason) security event (once per
# reason until a command is accepted, the rest counted) and no effect:
# topic, size, COSE structure ("malformed"), tag ("forged"), counter
# ("replayed" when it equals the last accepted one, "old" below it), time
# ("expired"/"future", only when the device knows the wall time), the op
# allowlist ("not_allowed") and its arguments ("bad_args"). The counter is
# committed to NVS before the command is handed over, so a command that
# reboots the device cannot be replayed after the reboot.
import struct
from micropython import const

from ironclad import cbor, clock, cose, events, telemetry
from ironclad import nvs as _nvs
from ironclad.throttle import Throttle

NAMESPACE = "ic_cmd"
_REC = "<8sQ"  # epoch, last accepted counter
_REC_LEN = const(16)
_ERR_NOT_FOUND = const(-4354)  # ESP_ERR_NVS_NOT_FOUND
MAX_MESSAGE = const(256)  # a command is well under 100 bytes
MAX_AGE_S = const(600)
MAX_SKEW_S = const(300)

# Allowed operations and their integer arguments: (name, min, max). Every
# argument is required; any other key in a command is refused.
OPS = {
    "read": (),  # publish a reading now
    "interval": (("s", 1, 86400),),  # seconds between readings
    "reboot": (),
    "update": (),  # look for an update (the update itself is signed: ironclad.update)
    "wipe": (("confirm", 0x57495045, 0x57495045),),  # decommission: "WIPE" as the argument, so no stray op erases
}


class Rejected(Exception):
    """A command that was refused; args[0] is the reason code."""


class Command:
    def __init__(self, op, args, counter):
        self.op = op
        self.args = args
        self.counter = counter

    def __repr__(self):
        return "<Command %s %r #%d>" % (self.op, self.args, self.counter)


class Verifier:
    """Opens commands for one device. z: the ECDH secret
    (telemetry.shared_secret), epoch: the nonce counter's (keys follow it),
    topic: <prefix>/<device-id>/cmd, nvs: where the counter floor is kept."""

    def __init__(self, z, device_id, epoch, topic, nvs=None, ops=OPS):
        key, iv = telemetry.derive(z, epoch, telemetry.DOWN, device_id)
        self._enc = cose.Encrypt0(key, iv)
        self.topic = topic.encode() if isinstance(topic, str) else bytes(topic)
        self._nvs = _nvs.open(NAMESPACE) if nvs is None else nvs
        self._epoch = bytes(epoch)
        self.ops = ops
        buf = bytearray(_REC_LEN)
        try:
            n = self._nvs.get_blob("floor", buf)
        except OSError as e:
            if e.args[0] != _ERR_NOT_FOUND:
                raise
            n = 0
        ep, floor = struct.unpack(_REC, buf) if n == _REC_LEN else (b"", 0)
        # A floor kept for another epoch belongs to other keys: commands
        # under those never open now, so counting restarts.
        self.floor = floor if ep == self._epoch else 0
        self.throttle = Throttle("cmd")  # each reason once until a command is accepted

    def _reject(self, reason, detail=""):
        # Recorded once per reason until a command is accepted (ironclad.throttle).
        self.throttle.record(reason, detail)
        raise Rejected(reason)

    def open(self, topic, msg):
        """A received command -> Command, or Rejected (after recording the
        event). The caller acts on a Command only after this returns."""
        if (topic.encode() if isinstance(topic, str) else bytes(topic)) != self.topic:
            self._reject("topic")
        if len(msg) > MAX_MESSAGE:
            self._reject("too_long", "%d bytes" % len(msg))
        try:
            ctr, pt = self._enc.decrypt_seq(msg, self.topic)
        except cose.AuthError:
            self._reject("forged")
        except (cose.CoseError, ValueError) as e:
            self._reject("malformed", str(e))
        if ctr <= self.floor:
            self._reject("replayed" if ctr == self.floor else "old", "ctr %d <= %d" % (ctr, self.floor))
        try:
            body = cbor.decode(pt, max_depth=2, max_items=16)
        except cbor.CBORError as e:
            self._reject("malformed", str(e))
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            self._reject("malformed", "no op")
        op = body["op"]
        spec = self.ops.get(op)
        if spec is None:
            self._reject("not_allowed", op)
        iat = body.get("iat")
        if not isinstance(iat, int):
            self._reject("bad_args", "iat")
        # The board's clock. On an ESP32 time.time() and machine.RTC are one
        # clock (MicroPython v1.28.0 ports/esp32/machine_rtc.c settimeofday,
        # modtime.c gettimeofday); the unix stand-in leaves time.time() on
        # the host's clock, so the RTC is read, as clock.ensure set it.
        now = clock.now()
        if now < clock.RELEASED:
            now = 0  # never set: no judgement of time
        ahead = False
        if now:
            if iat < now - MAX_AGE_S:
                self._reject("expired", "%s %ds old" % (op, now - iat))
            if iat > now + MAX_SKEW_S:
                # From the future by this device's clock. A clock that no
                # time server set this boot may be days behind (set to the
                # stored floor): the console's authenticated time is then
                # the better one, taken once every check has passed
                # (clock.advance; a replay is stopped by the counter). A
                # clock a time server set keeps the skew limit.
                if clock.synced():
                    self._reject("future", op)
                ahead = True
        if len(body) != 2 + len(spec):
            self._reject("bad_args", op)
        args = {}
        for name, lo, hi in spec:
            v = body.get(name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                self._reject("bad_args", "%s %s" % (op, name))
            args[name] = v
        if ahead and not clock.advance(iat):
            self._reject("future", op)  # further ahead than clock.advance takes
        # Commit the counter before anything acts on the command.
        self._nvs.set_blob("floor", struct.pack(_REC, self._epoch, ctr))
        self._nvs.commit()
        self.floor = ctr
        n = self.throttle.reset()
        events.record("cmd", op, "ok", ("ctr %d" % ctr) + (" +%d rejected" % n if n else ""))
        return Command(op, args, ctr)
