# Device tests: authenticated commands. The console side is played here with
# the same primitives and the fleet's private key; tests/host/test_console.py
# sends commands made by the host console (cryptography, cbor2).
#
# Every rejection must leave a ("cmd", reason) event and change nothing (the
# counter floor stays where it was).
import os

import esp32

from ironclad import cbor, clock, commands, cose, events, nonce, p256, telemetry

# Library from source on the unix port: see tests/device/test_telemetry.py.
HEAP_KIB = 208  # passed at 160 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"
TOPIC = "ironclad/dev-0007/cmd"


def _now():
    return events._wall()


class Console:
    """The fleet side of one device's command channel."""

    def __init__(self):
        dd = p256.generate()
        fd = p256.generate()
        self.z = telemetry.shared_secret(dd, p256.public_key(fd))
        self.epoch = nonce.Counter().epoch
        key, iv = telemetry.derive(p256.ecdh(fd, p256.public_key(dd)), self.epoch, telemetry.DOWN, "dev-0007")
        self.enc = cose.Encrypt0(key, iv)
        self.ctr = 1000

    def cmd(self, op, ctr=None, topic=TOPIC, iat=None, **args):
        if ctr is None:
            self.ctr += 1
            ctr = self.ctr
        body = {"op": op, "iat": _now() if iat is None else iat}
        body.update(args)
        return bytes(self.enc.encrypt_seq(ctr, cbor.encode(body), topic.encode()))

    def verifier(self):
        return commands.Verifier(self.z, "dev-0007", self.epoch, TOPIC)


def _rejected(v, topic, msg, reason):
    # Refused with that reason, nothing changed, and an event unless the
    # same reason was already recorded since the last accepted command.
    floor = v.floor
    n = events.head()[0]
    first = reason not in v.throttle.logged
    try:
        v.open(topic, msg)
    except commands.Rejected as e:
        assert e.args[0] == reason, (e.args[0], reason)
    else:
        raise AssertionError("accepted, expected %s" % reason)
    assert v.floor == floor
    ev = events.since(n)
    if first:
        assert len(ev) == 1 and ev[0]["kind"] == "cmd" and ev[0]["reason"] == reason and ev[0]["outcome"] == "rejected"
    else:
        assert ev == []


def test_a_flood_of_rejections_does_not_wipe_the_ring():
    c = Console()
    v = c.verifier()
    events.record("boot", "bad_signature")  # the evidence a flood would push out
    for i in range(3 * events.SLOTS):
        _rejected(v, TOPIC, b"\xd0" + bytes(i % 50), "malformed")
    assert v.throttle.suppressed == 3 * events.SLOTS - 1
    _rejected(v, TOPIC, c.cmd("exec"), "not_allowed")
    ev = events.since(0)
    assert [(e["kind"], e["reason"]) for e in ev] == [("boot", "bad_signature"), ("cmd", "malformed"), ("cmd", "not_allowed")]
    assert ev[2]["detail"].startswith("+%d " % (3 * events.SLOTS - 1))
    # An accepted command starts a new episode: the next rejection is recorded.
    v.open(TOPIC, c.cmd("read"))
    _rejected(v, TOPIC, c.cmd("exec"), "not_allowed")
    assert events.since(0)[-1]["reason"] == "not_allowed"


def test_allowlisted_commands_accepted_in_order():
    c = Console()
    v = c.verifier()
    got = [v.open(TOPIC, c.cmd("read")), v.open(TOPIC, c.cmd("interval", s=30)),
           v.open(TOPIC, c.cmd("update")), v.open(TOPIC, c.cmd("reboot"))]
    assert [(x.op, x.args) for x in got] == [("read", {}), ("interval", {"s": 30}), ("update", {}), ("reboot", {})]
    assert [x.counter for x in got] == [1001, 1002, 1003, 1004]
    assert v.floor == 1004
    ok = [e for e in events.since(0) if e["outcome"] == "ok"]
    assert [e["reason"] for e in ok] == ["read", "interval", "update", "reboot"]


def test_replayed_and_old_rejected_also_after_reboot():
    c = Console()
    v = c.verifier()
    m1 = c.cmd("read")
    m2 = c.cmd("reboot")
    v.open(TOPIC, m1)
    v.open(TOPIC, m2)
    _rejected(v, TOPIC, m2, "replayed")
    _rejected(v, TOPIC, m1, "old")
    # The floor is on flash before the command runs: a reboot command cannot
    # be replayed after the reboot.
    esp32._store = None
    v2 = c.verifier()
    assert v2.floor == c.ctr
    _rejected(v2, TOPIC, m2, "replayed")
    assert v2.open(TOPIC, c.cmd("read")).counter == c.ctr


def test_forged_rejected():
    c = Console()
    v = c.verifier()
    m = bytearray(c.cmd("interval", s=5))
    m[-3] ^= 1  # ciphertext/tag
    _rejected(v, TOPIC, bytes(m), "forged")
    # Another device's console key (the keys are per device and direction).
    other = Console()
    _rejected(v, TOPIC, other.cmd("reboot"), "forged")
    # A device-to-fleet message reflected back as a command.
    up_key, up_iv = telemetry.derive(c.z, c.epoch, telemetry.UP, "dev-0007")
    refl = cose.Encrypt0(up_key, up_iv).encrypt_seq(5000, cbor.encode({"op": "reboot", "iat": _now()}), TOPIC.encode())
    _rejected(v, TOPIC, bytes(refl), "forged")
    # A bigger counter in the header does not carry the old tag over.
    ok = c.cmd("read", ctr=2000)
    head = bytes(ok).index(b"\x06\x42\x07\xd0")  # Partial IV 2000
    moved = ok[:head] + b"\x06\x42\x07\xd1" + ok[head + 4:]
    _rejected(v, TOPIC, moved, "forged")
    assert v.open(TOPIC, ok).counter == 2000


def test_wrong_topic_rejected():
    c = Console()
    v = c.verifier()
    _rejected(v, "ironclad/dev-0008/cmd", c.cmd("read"), "topic")
    # Sealed for another topic but delivered on ours: the AAD does not match.
    _rejected(v, TOPIC, c.cmd("read", topic="ironclad/dev-0008/cmd"), "forged")


def test_not_allowlisted_and_bad_arguments_rejected():
    c = Console()
    v = c.verifier()
    _rejected(v, TOPIC, c.cmd("exec"), "not_allowed")
    _rejected(v, TOPIC, c.cmd("format"), "not_allowed")
    # wipe (remote decommission) needs its confirmation word and nothing else
    _rejected(v, TOPIC, c.cmd("wipe"), "bad_args")
    _rejected(v, TOPIC, c.cmd("wipe", confirm=1), "bad_args")
    _rejected(v, TOPIC, c.cmd("interval"), "bad_args")
    _rejected(v, TOPIC, c.cmd("interval", s=0), "bad_args")
    _rejected(v, TOPIC, c.cmd("interval", s=86401), "bad_args")
    _rejected(v, TOPIC, c.cmd("interval", s=True), "bad_args")
    _rejected(v, TOPIC, c.cmd("interval", s="10"), "bad_args")
    _rejected(v, TOPIC, c.cmd("reboot", force=1), "bad_args")
    _rejected(v, TOPIC, c.cmd("read", iat="now"), "bad_args")


def test_expired_and_future_rejected_when_the_clock_is_known():
    c = Console()
    v = c.verifier()
    # A board powers up at 2000-01-01 (the stand-in time as on the board):
    # the agent sets the clock (clock.ensure) before it takes commands.
    assert not _now()
    clock.set_rtc(clock.RELEASED + 86400)
    now = _now()
    assert now
    clock.source = "ntp"  # as a time server set it
    _rejected(v, TOPIC, c.cmd("reboot", iat=now - commands.MAX_AGE_S - 5), "expired")
    _rejected(v, TOPIC, c.cmd("reboot", iat=now + commands.MAX_SKEW_S + 60), "future")
    assert v.open(TOPIC, c.cmd("reboot", iat=now - 30)).op == "reboot"


def test_a_clock_no_time_server_set_takes_the_command_time():
    # Booted with no time server: the clock sits at the stored floor, days
    # behind. An authenticated command's time is taken (bounded), so a fresh
    # command (a remote wipe) is not refused as from the future.
    c = Console()
    v = c.verifier()
    # The true time, well past the floor (the board powers up at 2000-01-01;
    # the clock at the floor is what ensure() leaves with no time server).
    now = clock.floor() + 30 * 86400
    behind = now - 5 * 86400
    clock.set_rtc(behind)
    clock.source = "floor"
    assert v.open(TOPIC, c.cmd("read", iat=now)).op == "read"
    assert abs(clock.now() - now) <= 2 and clock.stored() >= now  # clock and floor moved on
    # Past what clock.advance takes (20 years above the floor): refused.
    clock.set_rtc(behind)
    _rejected(v, TOPIC, c.cmd("read", iat=clock.floor() + clock.MAX_AHEAD_S + 86400), "future")
    assert clock.now() < now - 86400
    # A forgery's time is never taken.
    bad = bytearray(c.cmd("read", iat=now))
    bad[-1] ^= 1
    _rejected(v, TOPIC, bytes(bad), "forged")
    assert clock.now() < now - 86400
    # Once a time server set the clock, the skew limit holds again.
    clock.source = "ntp"
    _rejected(v, TOPIC, c.cmd("read", iat=now), "future")


def test_malformed_rejected():
    c = Console()
    v = c.verifier()
    _rejected(v, TOPIC, b"", "malformed")
    _rejected(v, TOPIC, b"\xd0\x83\x43\xa1\x01\x0a\xa0\x40", "malformed")
    _rejected(v, TOPIC, bytes(300), "too_long")
    # A full IV instead of a counter: no replay protection, so refused.
    key, iv = telemetry.derive(c.z, c.epoch, telemetry.DOWN, "dev-0007")
    m = cose.Encrypt0(key).encrypt(bytes(13), cbor.encode({"op": "read", "iat": _now()}), TOPIC.encode())
    _rejected(v, TOPIC, bytes(m), "malformed")
    # Authentic but not a map with an op.
    enc = cose.Encrypt0(key, iv)
    _rejected(v, TOPIC, bytes(enc.encrypt_seq(3000, cbor.encode([1, 2]), TOPIC.encode())), "malformed")
    _rejected(v, TOPIC, bytes(enc.encrypt_seq(3001, b"\xff", TOPIC.encode())), "malformed")


def test_byte_string_map_keys_are_malformed():
    # {b"k": 1} and {"k": 1, b"k": 2}: comparing the two keys printed a
    # "bytes and str" warning on the console port (the ESP32 port enables
    # it) for every such map anyone on the broker sent.
    for data in (b"\xa1\x41k\x01", b"\xa2\x61k\x01\x41k\x02"):
        try:
            cbor.decode(data)
        except cbor.CBORError:
            continue
        raise AssertionError("decoded %r" % data)
    v = Console().verifier()
    _rejected(v, TOPIC, b"\xd0\x83\x43\xa1\x01\x0a\xa2\x61k\x01\x41k\x02\x40", "malformed")


def test_new_epoch_restarts_the_floor():
    c = Console()
    v = c.verifier()
    v.open(TOPIC, c.cmd("read", ctr=10 ** 15))
    assert commands.Verifier(c.z, "dev-0007", b"N" * 8, TOPIC).floor == 0
    assert c.verifier().floor == 10 ** 15
