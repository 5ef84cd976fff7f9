# The MQTT client's packet handling without a network: the client reads from
# an in-memory stream (the seam the fuzzer uses too), so each malformed packet
# is exactly the bytes given. Network behaviour (TLS, mosquitto, a hostile
# broker over TLS) is in tests/host/test_mqtt*.py and test_tls.py.
import io
import os
import ssl

from ironclad import events

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"

from ironclad import mqtt  # noqa: E402
from ironclad.mqtt import Backoff, MQTTClient, ProtocolError  # noqa: E402

# Compiling mqtt.py from source takes about 120 KiB on the unix port; on the
# board it is frozen, and the host tests run it from .mpy under 64 KiB. The
# `time` stand-in (2000 epoch, 2**30 tick wrap) takes 3 KiB more.
HEAP_KIB = 224  # passed at 176 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts

TOPIC = b"ironclad/dev-1/cmd"


class Stream:
    """Broker bytes in, client bytes out; chunk limits each read (partial
    reads, as TLS records give). At the end of the input it reads as closed,
    or with idle=True as a socket with nothing yet (None)."""

    def __init__(self, data, chunk=0, idle=False):
        self.inp = io.BytesIO(data)
        self.out = bytearray()
        self.chunk = chunk
        self.idle = idle
        self.closed = False
        self.writes = 0

    def readinto(self, mv):
        if self.chunk:
            mv = memoryview(mv)[:self.chunk]
        n = self.inp.readinto(mv)
        return None if self.idle and not n else n

    def write(self, b):
        self.out += b
        self.writes += 1
        return len(b)

    def close(self):
        self.closed = True


def ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.verify_mode = ssl.CERT_REQUIRED
    return c


def client(**kw):
    return MQTTClient("dev-1", "127.0.0.1", 1, ctx(), **kw)


def attached(data, chunk=0, idle=False, **kw):
    c = kw.pop("c", None) or client(**kw)
    s = Stream(data, chunk, idle)
    c._attach(s)
    return c, s


def publish(topic, payload, qos=0, pid=1, flags=0):
    body = bytes((len(topic) >> 8, len(topic) & 0xFF)) + topic + (bytes((pid >> 8, pid & 0xFF)) if qos else b"") + payload
    return bytes((0x30 | flags | (qos << 1),)) + varint(len(body)) + body


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def raises(cls, reason, f, *a):
    try:
        f(*a)
    except cls as e:
        assert e.reason == reason, (reason, e.reason, str(e))
        return e
    raise AssertionError("no %s(%s)" % (cls.__name__, reason))


def test_tls_is_required():
    for bad in (None, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)):  # the second verifies nothing
        try:
            MQTTClient("d", "127.0.0.1", 8883, bad)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % bad)
    opt = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    opt.verify_mode = ssl.CERT_OPTIONAL
    try:
        MQTTClient("d", "127.0.0.1", 8883, opt)
        raise AssertionError("accepted CERT_OPTIONAL")
    except ValueError:
        pass


def test_backoff_grows_with_jitter_and_caps():
    lo = Backoff(1000, 8000, rand=lambda n: 0)
    hi = Backoff(1000, 8000, rand=lambda n: n - 1)
    assert [lo.next_ms() for _ in range(6)] == [500, 1000, 2000, 4000, 4000, 4000]
    assert [hi.next_ms() for _ in range(6)] == [999, 1999, 3999, 7999, 7999, 7999]
    lo.reset()
    assert lo.next_ms() == 500
    # the real jitter stays in [d/2, d)
    b = Backoff(100, 1000)
    for n in range(40):
        d = min(1000, 100 << min(n, 10))
        assert d // 2 <= b.next_ms() < d


def test_reconnect_sleeps_out_the_backoff():
    # Port 1 on loopback refuses: every attempt fails fast, with no event.
    c = client(timeout_s=1, backoff=Backoff(100, 400, rand=lambda n: 0))
    slept = []
    try:
        c.reconnect(attempts=5, sleep_ms=slept.append)
        raise AssertionError("connected to nothing")
    except mqtt.ConnectionLost as e:
        assert e.reason == "connect"
    # no sleep before the first attempt, then the delay left of each backoff
    assert len(slept) == 4, slept
    for s, want in zip(slept, (50, 100, 200, 200)):
        assert want - 15 <= s <= want, slept
    assert events.head()[0] == 0  # an outage is not a security event
    assert not c.maintain()  # within the backoff delay: no attempt, no block


def test_publish_packets_on_the_wire():
    c, s = attached(b"")
    assert c.publish("ironclad/dev-1/telemetry", b"xy") == 0
    assert s.out == b"\x30\x1c\x00\x18ironclad/dev-1/telemetry" + b"xy"
    s.out = bytearray()
    pid = c.publish(b"t/1", b"p" * 200, qos=1, retain=True, wait=False)
    assert pid == 1 and c.inflight() == 1
    assert s.out == b""  # queued: wait=False batches writes
    c._flush()
    assert s.out == b"\x33\xcf\x01\x00\x03t/1\x00\x01" + b"p" * 200  # 207 = 0xcf 0x01
    for bad in ("t/+", "#", ""):
        try:
            c.publish(bad, b"x")
            raise AssertionError("published to %r" % bad)
        except ValueError:
            pass
    try:
        c.publish("t", b"x", qos=2)
        raise AssertionError("qos 2")
    except ValueError:
        pass


def test_received_publish_puback_pingresp_and_acks():
    got = []
    acks = []
    data = (publish(TOPIC, b"hello") + publish(TOPIC, b"q1", qos=1, pid=0x1234)
            + b"\xd0\x00" + b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02")
    for chunk in (0, 1, 3):
        c, s = attached(b"", chunk=chunk)
        c.set_callback(lambda t, m: got.append((t, bytes(m))))
        c.set_ack_callback(acks.append)
        c.publish("t", b"a", qos=1, wait=False)
        c.publish("t", b"b", qos=1, wait=False)
        c._flush()
        s.inp = io.BytesIO(data)
        s.out = bytearray()
        ops = [c.wait_msg(0) for _ in range(5)]
        assert ops == [0x30, 0x30, 0xD0, 0x40, 0x40], ops
        assert got[-2:] == [(TOPIC, b"hello"), (TOPIC, b"q1")]
        assert s.out == b"\x40\x02\x12\x34"  # the QoS 1 message acknowledged
        assert acks[-2:] == [1, 2] and c.inflight() == 0
        raises(mqtt.ConnectionLost, "closed by broker", c.wait_msg, 0)  # end of stream between packets
        assert not c.connected and s.closed


def test_check_msg_handles_what_arrived_and_never_waits():
    c, s = attached(b"\xd0\x00" * 3, idle=True)
    c.ping()
    assert c._ping_at is not None and s.out == b"\xc0\x00"
    assert c.check_msg() == 0xD0  # all three handled, then nothing waiting
    assert c._ping_at is None and c.connected and s.inp.read() == b""
    assert c.check_msg() is None and c.connected


def test_resent_publish_has_dup_and_double_ack_is_tolerated():
    c, s = attached(b"")
    pid = c.publish("t", b"m", qos=1, wait=False)
    c._flush()
    first = bytes(s.out)
    e = c._inflight[0]
    e[2] -= c.timeout_ms  # the PUBACK is overdue
    s.out = bytearray()
    c._timers()
    assert s.out == bytes((first[0] | 0x08,)) + first[1:], (s.out, first)
    # the broker acknowledges both copies: the second PUBACK is no violation
    s.inp = io.BytesIO(b"\x40\x02\x00\x01\x40\x02\x00\x01")
    assert c.wait_msg(0) == 0x40 and c.wait_msg(0) == 0x40 and c.inflight() == 0
    # a third one is
    s.inp = io.BytesIO(b"\x40\x02\x00\x01")
    raises(ProtocolError, "unknown_puback", c.wait_msg, 0)
    assert pid == 1


def test_puback_deadline_after_one_resend():
    c, s = attached(b"")
    c.publish("t", b"m", qos=1, wait=False)
    c._inflight[0][2] -= c.timeout_ms
    c._timers()  # resent
    c._inflight[0][2] -= c.timeout_ms
    raises(mqtt.Timeout, "puback", c.check_msg)
    assert not c.connected
    assert c.inflight() == 1  # kept: resent after the reconnect


def test_pid_wraps_and_skips_ids_in_flight():
    c, s = attached(b"")
    c.pid = 0xFFFD
    assert [c.publish("t", b"", qos=1, wait=False) for _ in range(3)] == [0xFFFE, 0xFFFF, 1]
    # Those three stay unacknowledged while the ids come round again (a
    # window that never drains): the next id after 0xFFFD is 2.
    for want in range(2, 0xFFFE):
        assert c._next_pid() == want
    assert c._next_pid() == 2  # 0xFFFE, 0xFFFF and 1 are still in flight
    assert c._next_pid() == 3
    # Once the window has drained, ids run on without a search.
    s.inp = io.BytesIO(b"\x40\x02\xff\xfe\x40\x02\xff\xff\x40\x02\x00\x01")
    assert [c.wait_msg(0) for _ in range(3)] == [0x40] * 3 and c.inflight() == 0
    assert c.publish("t", b"", qos=1, wait=False) == 4


def test_window_full_waits_for_an_ack_then_sends_a_batch():
    c, s = attached(b"", idle=True, max_inflight=4)
    for i in range(4):
        c.publish("t", b"%d" % i, qos=1, wait=False)
    assert s.out == b""
    # full: the queue goes out, the first PUBACK is awaited and the two that
    # have arrived with it are taken too
    s.inp = io.BytesIO(b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\x00\x03")
    assert c.publish("t", b"4", qos=1, wait=False) == 5
    assert s.writes == 1 and [e[0] for e in c._inflight] == [4, 5]
    for i in range(2):
        c.publish("t", b"%d" % i, qos=1, wait=False)
    c._flush()
    assert s.writes == 2 and len(s.out) == 7 * 8  # seven 8-byte PUBLISHes in two writes


# (bytes after the connection is up, exception, reason)
BAD = [
    (b"\x30\xff\xff\xff\xff\x7f", ProtocolError, "bad_length"),
    (b"\x30\x80\x00", ProtocolError, "bad_length"),
    (b"\x30\xff\xff\xff\x7f", ProtocolError, "too_big"),
    (b"\x30\x81\x20", ProtocolError, "too_big"),
    (b"\x30\x06\x00\x40abcd", ProtocolError, "bad_topic"),
    (b"\x30\x01\x00", ProtocolError, "bad_topic"),
    (b"\x30\x02\x00\x00", ProtocolError, "bad_topic"),
    (publish(b"a/#", b""), ProtocolError, "bad_topic"),
    (publish(b"a\x00b", b""), ProtocolError, "bad_topic"),
    (publish(b"a" * 257, b""), ProtocolError, "bad_topic"),
    (b"\x32\x05\x00\x03abc", ProtocolError, "bad_topic"),
    (publish(TOPIC, b"x", qos=1, pid=0), ProtocolError, "bad_packet"),
    (publish(TOPIC, b"x", qos=2, pid=9), ProtocolError, "qos2"),
    (publish(TOPIC, b"x", qos=3, pid=9), ProtocolError, "bad_packet"),
    (b"\x20\x02\x00\x00", ProtocolError, "unexpected"),
    (b"\x50\x02\x00\x01", ProtocolError, "unexpected"),
    (b"\x90\x03\x00\x01\x00", ProtocolError, "unexpected"),
    (b"\x00\x00", ProtocolError, "unexpected"),
    (b"\xf0\x00", ProtocolError, "unexpected"),
    (b"\x40\x03\x00\x01\x00", ProtocolError, "bad_packet"),
    (b"\x41\x02\x00\x01", ProtocolError, "bad_packet"),
    (b"\xd0\x01\x00", ProtocolError, "bad_packet"),
    (b"\x40\x02\xbe\xef", ProtocolError, "unknown_puback"),
    (publish(TOPIC, b"y" * 50)[:20], ProtocolError, "truncated"),
    (b"\x30", ProtocolError, "truncated"),
    (b"\x30\x85", ProtocolError, "truncated"),
]


def test_malformed_packets_drop_the_connection_with_one_event_per_reason():
    c = client()
    for data, cls, reason in BAD:
        for chunk in (0, 1):
            c, s = attached(data, chunk=chunk, c=c)
            e = raises(cls, reason, c.wait_msg, 0)
            assert not c.connected and s.closed, reason
            assert c.last_error is e
    recs = events.since(0)
    want = []
    for _, _, r in BAD:
        if r not in want:
            want.append(r)
    assert [r["reason"] for r in recs] == want, [r["reason"] for r in recs]
    assert all(r["kind"] == "mqtt" and r["outcome"] == "rejected" for r in recs)
    # a connection that stays up for stable_ms ends the outage: logged again
    c._up_since = 0
    c.stable_ms = 0
    c, s = attached(BAD[0][0], c=c)
    raises(ProtocolError, "bad_length", c.wait_msg, 0)
    assert events.since(0)[-1]["reason"] == "bad_length" and len(events.since(0)) == len(want) + 1


def test_callback_can_publish():
    c, s = attached(publish(TOPIC, b"ping", qos=1, pid=7) + b"\x40\x02\x00\x01")

    def cb(t, m):
        # a reply from inside the callback: its PUBACK wait reads on
        c.publish("reply", m, qos=1)

    c.set_callback(cb)
    assert c.wait_msg(0) == 0x30
    assert s.out[-4:] == b"\x40\x02\x00\x07" and c.inflight() == 0


def test_subscribe_waits_for_its_suback():
    # Broker: a retained PUBLISH first (handled while waiting), then the SUBACK.
    c, s = attached(publish(TOPIC, b"retained") + b"\x90\x03\x00\x01\x01")
    got = []
    c.set_callback(lambda t, m: got.append(m))
    assert c.subscribe(TOPIC, 1) == 1
    assert s.out == b"\x82" + bytes((5 + len(TOPIC),)) + b"\x00\x01\x00" + bytes((len(TOPIC),)) + TOPIC + b"\x01"
    assert got == [b"retained"] and c._subs == [(TOPIC, 1)]
    # refused (0x80): returned, not restored after a reconnect
    c, s = attached(b"\x90\x03\x00\x02\x80", c=c)
    assert c.subscribe(b"other", 1) == 0x80 and c._subs == [(TOPIC, 1)]
    # a SUBACK for another request, or with a code 3.1.1 does not have
    c, s = attached(b"\x90\x03\x00\x09\x01", c=c)
    raises(ProtocolError, "bad_packet", c.subscribe, b"x", 0)
    c, s = attached(b"\x90\x03\x00\x04\x02", c=c)
    raises(ProtocolError, "bad_packet", c.subscribe, b"x", 0)


def _near_wrap(ms_before):
    # ticks_ms wraps at 2**30 on the board (the `time` stand-in): put the wrap
    # ms_before ahead; time._advance lets time pass without sleeping.
    import time

    time._advance(((1 << 30) - ms_before - time.ticks_ms()) % (1 << 30))
    return time


def test_timers_across_the_tick_wrap():
    time = _near_wrap(1000)
    c, s = attached(b"", keepalive=30)
    c.publish("t", b"m", qos=1, wait=False)
    c._flush()
    first = bytes(s.out)
    s.out = bytearray()
    t0 = time.ticks_ms()
    time._advance(c.timeout_ms - 10)  # not yet overdue, and past the wrap
    assert time.ticks_ms() < t0  # wrapped
    c._timers()
    assert s.out == b"", s.out
    time._advance(20)  # the PUBACK is overdue: resent with DUP
    c._timers()
    assert s.out == bytes((first[0] | 0x08,)) + first[1:], (s.out, first)
    # keepalive: a PINGREQ once half of it has passed with nothing sent
    s.out = bytearray()
    s.inp = io.BytesIO(b"\x40\x02\x00\x01")
    assert c.wait_msg(0) == 0x40 and c.inflight() == 0
    time._advance(15000)
    c._timers()
    assert s.out == b"\xc0\x00", s.out


# Topics MQTT 3.1.1 forbids [MQTT-1.5.3-1, -2]: RFC 3629 ill-formed UTF-8.
BAD_UTF8 = [
    b"a/\xff",  # never a UTF-8 byte
    b"a/\x80",  # a lone continuation byte
    b"a/\xc3",  # a sequence cut short
    b"a/\xc0\xaf",  # overlong "/" (C0, C1 are never valid)
    b"a/\xe0\x80\xaf",  # overlong 3-byte "/"
    b"a/\xf0\x80\x80\xaf",  # overlong 4-byte "/"
    b"a/\xed\xa0\x80",  # surrogate U+D800
    b"a/\xed\xbf\xbf",  # surrogate U+DFFF
    b"a/\xf4\x90\x80\x80",  # U+110000, past the last code point
    b"a/\xf8\x88\x80\x80\x80",  # 5-byte form
    b"a/\xe2\x82",  # truncated 3-byte
    b"a/\xe2\x28\xa1",  # a bad continuation byte
    b"a/\x00",  # U+0000
]
GOOD_UTF8 = [b"a/b", "a/\u00e9/\u20ac/\U0001f600".encode(), b"a/\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf", b"\xed\x9f\xbf"]


def test_topics_must_be_well_formed_utf8():
    for t in BAD_UTF8:
        assert not mqtt.utf8_ok(t), t
        c, s = attached(publish(t, b"x"))
        raises(ProtocolError, "bad_topic", c.wait_msg, 0)
        assert not c.connected
    for t in GOOD_UTF8:
        assert mqtt.utf8_ok(t), t
        got = []
        c, s = attached(publish(t, b"x"))
        c.set_callback(lambda tp, m: got.append(tp))
        assert c.wait_msg(0) == 0x30 and got == [t]


def test_qos0_publish_with_dup_is_malformed():
    c, s = attached(publish(TOPIC, b"x", flags=0x08))
    raises(ProtocolError, "bad_packet", c.wait_msg, 0)
    # QoS 1 with DUP is a redelivery: handled
    c, s = attached(publish(TOPIC, b"x", qos=1, pid=3, flags=0x08))
    assert c.wait_msg(0) == 0x30 and s.out == b"\x40\x02\x00\x03"


def test_session_present_answering_a_clean_session_is_refused():
    c, s = attached(b"")
    c._buf[0:2] = b"\x01\x00"
    raises(ProtocolError, "bad_connack", c._connack, 0x20, 2, True)
    assert c._connack(0x20, 2, False) is True  # a persistent session may be present
    c._buf[0:2] = b"\x00\x00"
    assert c._connack(0x20, 2, True) is False


def test_a_burst_of_publishes_does_not_starve_the_keepalive():
    # A PINGREQ is out; the broker's PINGRESP sits behind a backlog that
    # takes longer than timeout_s to handle. Each packet read proves the
    # broker alive: no keepalive drop.
    import time

    burst = b"".join(publish(TOPIC, b"m%d" % i) for i in range(20)) + b"\xd0\x00"
    c, s = attached(burst, idle=True, timeout_s=0.2)
    c.ping()
    slow = []
    c.set_callback(lambda t, m: (slow.append(1), time.sleep_ms(20)))
    c._due = 0
    for _ in range(3):
        c.check_msg()
    assert c.connected and len(slow) == 20 and c._ping_at is None
    # With nothing at all from the broker, the keepalive deadline still holds.
    c, s = attached(b"", idle=True, timeout_s=0.2)
    c.ping()
    time.sleep_ms(250)
    raises(mqtt.Timeout, "keepalive", c.check_msg)
