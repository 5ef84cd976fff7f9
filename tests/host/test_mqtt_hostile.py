"""The device MQTT client against a hostile broker (tools/ictl/sim/hostile.py): a
TLS server on 127.0.0.1 that answers CONNECT properly and then sends raw
bytes. The client runs on the unix port under -X heapsize=68K (the agent's
whole 64 KiB heap plus the library code loaded into it, which a board keeps
in flash), the library compiled by mpy-cross as the firmware freezes it.

For every case the client must drop the connection with the right reason,
log one security event per reason, never raise anything but MQTTError (a
MemoryError would end the process), never take longer than its timeout, and
reconnect with exponential backoff; the last connection behaves and the
client's QoS 1 publish goes through."""
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from ictl.sim import hostile  # noqa: E402
from ictl import pki  # noqa: E402
from ictl.sim.hostile import CONNACK_OK, CONNECT, PUBLISH, DeviceRunner, HostileBroker, packet, publish  # noqa: E402

pytestmark = pytest.mark.timeout(180)

TIMEOUT_S = 1.0  # the client's packet deadline in these scenarios
CONNECT_S = 15  # its connect deadline: the handshake is not what is tested, and a loaded machine is slow
BASE_MS, CAP_MS = 60, 480
TOPIC = "ironclad/dev-1/cmd"

# (name, bytes sent after CONNACK, expected reason, then: "hold" keeps the
# connection open, "close" closes it)
CASES = [
    ("varint_5_bytes", b"\x30\xff\xff\xff\xff\x7f", "bad_length", "hold"),
    ("varint_not_minimal", b"\x30\x80\x00", "bad_length", "hold"),
    ("length_at_varint_max", b"\x30\xff\xff\xff\x7f", "too_big", "hold"),
    ("length_over_cap", b"\x30\x81\x20" + b"\x00" * 8, "too_big", "hold"),  # 4097 > 4096
    ("topic_longer_than_packet", b"\x30\x06\x00\x40abcd", "bad_topic", "hold"),
    ("topic_wildcard", publish("ironclad/+/cmd", b"x"), "bad_topic", "hold"),
    ("qos1_topic_leaves_no_pid", b"\x32\x05\x00\x03abc", "bad_topic", "hold"),
    ("unexpected_connack", CONNACK_OK, "unexpected", "hold"),
    ("unexpected_pubrec", b"\x50\x02\x00\x01", "unexpected", "hold"),
    ("unexpected_subscribe", packet(0x82, b"\x00\x01\x00\x01a\x00"), "unexpected", "hold"),
    ("reserved_type_0", b"\x00\x00", "unexpected", "hold"),
    ("reserved_type_15", b"\xf0\x00", "unexpected", "hold"),
    ("suback_unasked", b"\x90\x03\x00\x07\x00", "unexpected", "hold"),
    ("puback_bad_flags", b"\x42\x02\x00\x01", "bad_packet", "hold"),
    ("pingresp_with_body", b"\xd0\x01\x00", "bad_packet", "hold"),
    ("publish_qos2", publish(TOPIC, b"x", qos=2, pid=5), "qos2", "hold"),
    ("publish_qos3", b"\x36" + publish(TOPIC, b"x", qos=1)[1:], "bad_packet", "hold"),
    ("puback_unknown_id", b"\x40\x02\xbe\xef", "unknown_puback", "hold"),
    ("truncated_then_closed", publish(TOPIC, b"y" * 100)[:40], "truncated", "close"),
    ("truncated_then_silent", publish(TOPIC, b"y" * 100)[:40], "slow_packet", "hold"),
    ("slow_drip", publish(TOPIC, b"z" * 40), "slow_packet", "drip"),
]

SCENARIO = r'''
c = client(timeout_s=A["timeout_s"], connect_timeout_s=A["connect_s"], keepalive=60,
           backoff=Backoff(A["base"], A["cap"]))
got = []
c.set_callback(lambda t, m: got.append(len(m)))
end = time.ticks_add(time.ticks_ms(), A["run_ms"])
last = None
longest = 0
peak = 0
while time.ticks_diff(end, time.ticks_ms()) > 0:
    dt = -1  # a drop in maintain() (connecting) is not timed
    if c.maintain():
        # Connected: the hostile bytes come while the probe waits for its
        # PUBACK. Timed from here to the drop.
        t0 = time.ticks_ms()
        try:
            pid = c.publish("ironclad/dev-1/telemetry", b"probe", qos=1)
            out(recovered=pid)
            c.disconnect()
            break
        except MQTTError:
            pass
        dt = time.ticks_diff(time.ticks_ms(), t0)
        longest = max(longest, dt)
    gc.collect()
    peak = max(peak, gc.mem_alloc() - BASE_HEAP)
    if c.last_error is not last:
        last = c.last_error
        out(drop=[type(last).__name__, last.reason, dt])
    time.sleep_ms(5)
gc.collect()
out(longest_ms=longest, live_peak=peak, steady=gc.mem_alloc() - BASE_HEAP, base=BASE_HEAP, received=got)
report_events()
'''


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, dev=True)
    return d


@pytest.fixture(scope="module")
def device(pki_dir, tmp_path_factory):
    return DeviceRunner(pki_dir, tmp_path_factory.mktemp("dev"))


def run_cases(pki_dir, device, cases, run_s):
    def script(conn):
        conn.expect(CONNECT)
        conn.send(CONNACK_OK)
        if conn.index >= len(cases):
            conn.serve(10)
            return
        _, data, _, then = cases[conn.index]
        # Strike once the client waits for the PUBACK of its new probe; the
        # probes of earlier connections come first, resent with DUP, and are
        # acknowledged.
        while True:
            first, body = conn.expect(PUBLISH)
            if not first & 0x08:
                break
            tl = int.from_bytes(body[:2], "big")
            conn.send(b"\x40\x02" + body[2 + tl:4 + tl])
        conn.sent_at = time.monotonic()
        if then == "drip":
            conn.drip(data, 0.3)
        else:
            conn.send(data)
            if then == "hold":
                conn.hold(TIMEOUT_S * 4)

    with HostileBroker(pki_dir, script) as hb:
        r = device.run(SCENARIO, hb.port, timeout=run_s + 60, timeout_s=TIMEOUT_S, connect_s=CONNECT_S,
                       base=BASE_MS, cap=CAP_MS, run_ms=int(run_s * 1000))
        time.sleep(0.2)
        conns = list(hb.conns)
        assert not hb.errors, hb.errors
    return r, conns


def test_hostile_broker_cases(pki_dir, device):
    r, conns = run_cases(pki_dir, device, CASES, 40)
    assert r.ok, r
    drops = r.get("drop")
    assert len(drops) == len(CASES), (drops, r)
    for (name, _, reason, then), (cls, got, ms) in zip(CASES, drops):
        assert got == reason, "%s: dropped with %s (%s), expected %s" % (name, got, cls, reason)
        # the publish never blocked past the packet deadline (plus slack)
        assert 0 <= ms <= TIMEOUT_S * 1000 + 400, (name, ms)
    assert r.get("recovered"), r
    fin = r.get("longest_ms")[0]
    assert fin <= TIMEOUT_S * 1000 + 400

    # The client closed each hostile connection promptly: at once for malformed
    # input, after its one packet deadline for a slow drip or a stalled packet.
    for conn, (name, _, reason, then) in zip(conns, CASES):
        assert conn.ended is not None, name
        took = conn.ended - conn.sent_at
        if reason == "slow_packet":
            assert TIMEOUT_S - 0.2 <= took <= TIMEOUT_S + 0.6, (name, took)
        elif then == "hold":
            assert took <= 0.5, (name, took)

    # Reconnects back off exponentially with jitter: the n-th gap is at least
    # half of min(cap, base * 2**n).
    gaps = [b.accepted - a.ended for a, b in zip(conns, conns[1:])]
    for n, gap in enumerate(gaps):
        d = min(CAP_MS, BASE_MS * 2 ** n) / 1000
        assert gap >= d / 2 - 0.02, (n, gap, gaps)
    assert max(gaps) <= CAP_MS / 1000 + 0.6, gaps

    # One security event per reason per outage (the ring is not flooded).
    reasons = [e[1] for e in r.events if e[0] == "mqtt"]
    assert sorted(reasons) == sorted(set(c[2] for c in CASES)), r.events
    assert all(e[2] == "rejected" for e in r.events)

    # Heap: the run fitted the 64 KiB heap (a MemoryError would have ended
    # it), and what the client keeps live between calls (its buffers, the
    # TLS context, in-flight copies; module code aside) stays small.
    assert r.get("live_peak")[0] < 12 * 1024, r.out
    assert r.get("steady")[0] < 12 * 1024, r.out


def test_plaintext_listener_gets_tls_not_mqtt(tmp_path, device):
    """No plaintext fallback: against a plain TCP listener the client sends a
    TLS ClientHello, never an MQTT CONNECT, and gives up with a TLS error."""
    first = []

    def script(conn):
        # A plaintext broker: reads what comes, answers as MQTT, and closes
        # the connection when the client does not speak MQTT.
        conn.sock.settimeout(2)
        try:
            first.append(conn.sock.recv(5))
            conn.sock.sendall(CONNACK_OK)
        except OSError:
            pass

    with HostileBroker(None, script, tls=False) as hb:
        r = device.run(r'''
c = client(timeout_s=2)
try:
    c.connect()
    out(connected=True)
except MQTTError as e:
    out(error=[type(e).__name__, e.reason])
report_events()
''', hb.port)
    assert r.ok, r
    assert first and first[0][:1] == b"\x16", first  # TLS handshake record
    assert r.get("error") == [["TLSError", "handshake"]], r
    assert ["tls", "handshake", "rejected"] == r.events[0][:3]


CONNECT_SCENARIO = r'''
c = client(timeout_s=2, connect_timeout_s=4, keepalive=45, backoff=Backoff(20, 40))
c.set_last_will("ironclad/dev-1/state", b"offline", retain=True, qos=1)
end = time.ticks_add(time.ticks_ms(), 20000)
last = None
while time.ticks_diff(end, time.ticks_ms()) > 0:
    t0 = time.ticks_ms()
    up = c.maintain()
    if c.last_error is not last:
        last = c.last_error
        out(drop=[type(last).__name__, last.reason, time.ticks_diff(time.ticks_ms(), t0)])
    if up:
        out(up=1)
        c.disconnect()
        break
    time.sleep_ms(5)
report_events()
'''


def test_connack_refused_malformed_or_missing(tmp_path, pki_dir, device):
    """CONNECT as the broker sees it (3.1.1, client id, keepalive, clean
    session, retained QoS 1 will); then a refusal (return code 5), a
    malformed CONNACK, a CONNACK that never comes: each drops with its
    reason (events for the first two: an outage is not an attack), and the
    client comes back when the broker behaves."""
    plan = [CONNACK_OK[:3] + b"\x05", b"\x20\x03\x00\x00\x00", None, b"\xd0\x00", CONNACK_OK]

    def script(conn):
        conn.expect(CONNECT)
        answer = plan[min(conn.index, len(plan) - 1)]
        if answer is None:
            conn.hold(6)
            return
        conn.send(answer)
        conn.hold(2)

    with HostileBroker(pki_dir, script) as hb:
        r = device.run(CONNECT_SCENARIO, hb.port)
        conns = list(hb.conns)
    assert r.ok, r
    assert [d[:2] for d in r.get("drop")] == [["Refused", "refused_5"], ["ProtocolError", "bad_connack"],
                                                ["Timeout", "connack"], ["ProtocolError", "bad_connack"]], r
    assert r.get("drop")[2][2] <= 4600  # the CONNACK deadline is the connect deadline
    assert r.get("up") == [1]
    assert [e[:2] for e in r.events] == [["mqtt", "refused_5"], ["mqtt", "bad_connack"]], r.events
    first, body = conns[0].packets[0]
    # variable header: protocol name, level 4, flags, keepalive; then the payload
    assert body[:7] == b"\x00\x04MQTT\x04"
    flags = body[7]
    assert flags == 0x02 | 0x04 | 0x08 | 0x20, hex(flags)  # clean, will, will QoS 1, will retain
    assert int.from_bytes(body[8:10], "big") == 45
    assert body[10:] == b"\x00\x05dev-1" + b"\x00\x14ironclad/dev-1/state" + b"\x00\x07offline"
