"""The device MQTT client (ironclad.mqtt on the unix port, -X heapsize=68K)
against the real mosquitto from ictl.broker, with a paho-mqtt fleet console
on the other side: commands in, telemetry out, QoS 0 and 1, keepalive, the
last will, a frozen broker (PUBACK and PINGRESP deadlines, DUP resend), a
broker that is down (backoff, no events), a persistent session."""
import json
import os
import queue
import signal
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from ictl import broker  # noqa: E402
from ictl.sim.hostile import DeviceRunner  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DEV = "dev-1"
T = "ironclad/%s/" % DEV
WAIT = 10


class Console:
    """The fleet console (paho-mqtt, its own certificate): reads every
    device topic, writes commands."""

    def __init__(self, b):
        self.q = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-console")
        self.c.tls_set(ca_certs=b.ca_path, certfile=b.console_cert_path, keyfile=b.console_key_path,
                       cert_reqs=ssl.CERT_REQUIRED)
        self.c.reconnect_delay_set(0.1, 0.5)
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe("ironclad/#", 1), ready.set())
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, m.payload, m.retain))
        self.c.connect(b.host, b.port)
        self.c.loop_start()
        assert ready.wait(WAIT)
        time.sleep(0.2)  # the SUBACK

    def expect(self, topic, payload=None, timeout=WAIT):
        end = time.monotonic() + timeout
        while True:
            t, p, r = self.q.get(timeout=max(0.01, end - time.monotonic()))
            if t == topic and (payload is None or p == payload):
                return p

    def publish(self, topic, payload, qos=1):
        self.c.publish(topic, payload, qos=qos).wait_for_publish(WAIT)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class Lines:
    """Reads a device process's OUT records as they come."""

    def __init__(self, proc):
        self.proc = proc
        self.q = queue.Queue()
        self.text = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.text.append(line)
            if line.startswith("OUT "):
                self.q.put(json.loads(line[4:]))

    def next(self, key, timeout=WAIT):
        end = time.monotonic() + timeout
        while True:
            try:
                o = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no %r from the device; output:\n%s%s" % (
                    key, "".join(self.text), self.proc.stderr.read() if self.proc.poll() is not None else ""))
            if key in o:
                return o[key]


@pytest.fixture
def fleet(tmp_path):
    b = broker.Broker(tmp_path / "broker")
    b.start()
    con = Console(b)
    dev = DeviceRunner(b.pki_dir, tmp_path / "dev")
    procs = []

    def start(code, **args):
        p = dev.start(code, b.port, **args)
        procs.append(p)
        return Lines(p)
    try:
        yield b, con, dev, start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        con.close()
        b.stop()


def test_commands_telemetry_keepalive_and_last_will(fleet):
    b, con, dev, start = fleet
    d = start(r'''
c = client(keepalive=2, timeout_s=2)
c.set_last_will(A["t"] + "state", b"offline", retain=True, qos=1)
got = []
c.set_callback(lambda t, m: got.append([t.decode(), bytes(m).decode()]))
acked = []
c.set_ack_callback(acked.append)
out(session=c.connect())
out(ready=c.subscribe(A["t"] + "cmd/#", 1))
while len(got) < 2:
    c.wait_msg(100)
out(got=got)
c.publish(A["t"] + "telemetry", b"q0")
p1 = c.publish(A["t"] + "telemetry", b"q1", qos=1)
p2 = c.publish(A["t"] + "telemetry", b"q1-nowait", qos=1, wait=False)
c.sync()
out(acked=[p1, p2] == acked, inflight=c.inflight())
# Idle for 5 s (2.5 keepalives) handling nothing but what arrives: the client
# must ping, or mosquitto drops it after 1.5 keepalives.
pings = 0
end = time.ticks_add(time.ticks_ms(), 5000)
while time.ticks_diff(end, time.ticks_ms()) > 0:
    if c.wait_msg(200) == 0xD0:
        pings += 1
c.publish(A["t"] + "telemetry", b"after-idle", qos=1)
gc.collect()
out(pings=pings, connected=c.connected, heap=gc.mem_alloc() - BASE_HEAP)
time.sleep(60)  # killed here: the broker publishes the will
''', t=T)
    assert d.next("session") is False
    assert d.next("ready") == 1
    con.publish(T + "cmd/read", b"now", qos=0)
    con.publish(T + "cmd/interval", b"5", qos=1)
    assert d.next("got") == [[T + "cmd/read", "now"], [T + "cmd/interval", "5"]]
    con.expect(T + "telemetry", b"q0")
    con.expect(T + "telemetry", b"q1")
    con.expect(T + "telemetry", b"q1-nowait")
    assert d.next("acked") is True
    con.expect(T + "telemetry", b"after-idle", timeout=WAIT)
    assert d.next("pings") >= 2
    d.proc.send_signal(signal.SIGKILL)  # power cut: no DISCONNECT
    assert con.expect(T + "state", b"offline", timeout=5) == b"offline"
    # the pings kept the one connection alive through the idle time
    assert not [l for l in b.log_tail(200) if "exceeded timeout" in l]


def test_frozen_broker_ping_and_puback_deadlines_then_dup_resend(fleet):
    """mosquitto stopped with SIGSTOP: the TCP connection stays up but
    nothing answers. An idle client drops after its PINGRESP deadline; a
    publishing client resends once with DUP and drops after its PUBACK
    deadline; after SIGCONT it reconnects and resends, and the message
    arrives."""
    b, con, dev, start = fleet
    d = start(r'''
import os
c = client(keepalive=2, timeout_s=1, backoff=Backoff(100, 400))
c.connect()
out(up=1)
t0 = time.ticks_ms()
while c.maintain():
    time.sleep_ms(20)
out(idle_drop=[c.last_error.reason, time.ticks_diff(time.ticks_ms(), t0)])
c.keepalive = 60  # from here on the PUBACK deadline is the one that runs out
while not c.maintain():
    time.sleep_ms(20)
out(up=2)
while True:
    try:
        os.stat(A["frozen"])
        break
    except OSError:
        time.sleep_ms(10)
acked = []
c.set_ack_callback(acked.append)
t0 = time.ticks_ms()
try:
    c.publish(A["t"] + "telemetry", b"through-a-freeze", qos=1)
    out(pub="acked")
except MQTTError as e:
    out(pub=[e.reason, time.ticks_diff(time.ticks_ms(), t0), c.inflight()])
while not acked:
    c.maintain()
    time.sleep_ms(20)
out(acked=acked)
report_events()
''', t=T, frozen=os.path.join(dev.dir, "frozen"))
    assert d.next("up") == 1
    time.sleep(0.3)
    os.kill(b.pid, signal.SIGSTOP)
    try:
        reason, ms = d.next("idle_drop")
    finally:
        os.kill(b.pid, signal.SIGCONT)
    # pinged after keepalive/2 = 1 s idle, dropped 1 s (timeout_s) later
    assert reason == "keepalive" and 1500 <= ms <= 3500, (reason, ms)
    assert d.next("up") == 2
    os.kill(b.pid, signal.SIGSTOP)
    open(os.path.join(dev.dir, "frozen"), "w").close()
    try:
        reason, ms, inflight = d.next("pub")
    finally:
        time.sleep(0.2)
        os.kill(b.pid, signal.SIGCONT)
    assert (reason, inflight) == ("puback", 1)
    assert 1800 <= ms <= 3500, ms  # sent, resent with DUP at 1 s, given up at 2 s (+ scheduling slack, as above)
    assert con.expect(T + "telemetry", b"through-a-freeze") == b"through-a-freeze"
    assert d.next("acked") == [1]
    # timeouts are not security events
    d.proc.wait(WAIT)
    assert not [l for l in d.text if l.startswith("OUT {\"event\"")]


def test_broker_down_backoff_then_persistent_session(fleet):
    """A command is queued for the device while it is away; then the broker
    goes down: connection refused, retried with growing delays and no
    security events (an outage is not an attack). Broker back (sessions
    persisted): the device reconnects with clean_session=False and gets the
    command."""
    b, con, dev, start = fleet
    go = os.path.join(dev.dir, "go")
    d = start(r"""
import os
c = client(timeout_s=2, backoff=Backoff(100, 800))
got = []
c.set_callback(lambda t, m: got.append(bytes(m).decode()))
c.connect(clean_session=False)
c.subscribe(A["t"] + "cmd", 1)
c.disconnect()
out(away=1)
while True:
    try:
        os.stat(A["go"])
        break
    except OSError:
        time.sleep_ms(20)
tries = []
while not c.maintain():
    if c.last_error is not None and (not tries or tries[-1][1] is not c.last_error):
        tries.append([time.ticks_ms(), c.last_error])
    time.sleep_ms(10)
out(tries=[[t, e.reason] for t, e in tries])
end = time.ticks_add(time.ticks_ms(), 5000)
while not got and time.ticks_diff(end, time.ticks_ms()) > 0:
    c.wait_msg(100)
out(got=got)
c.disconnect()
report_events()
out(done=1)
""", t=T, go=go)
    assert d.next("away") == 1
    con.publish(T + "cmd", b"queued-while-away")
    b.stop()
    open(go, "w").close()
    time.sleep(2.5)
    b.start()
    tries = d.next("tries")
    assert len(tries) >= 3 and all(r == "connect" for _, r in tries), tries
    gaps = [t2 - t1 for (t1, _), (t2, _) in zip(tries, tries[1:])]
    for n, g in enumerate(gaps):
        # the n-th delay (from 0) is at least half of min(cap, base * 2**n)
        assert g >= min(800, 100 * 2 ** n) // 2 - 20, gaps
    assert max(gaps) <= 800 + 2000 + 200, gaps
    assert d.next("got") == ["queued-while-away"]
    assert d.next("done") == 1
    assert not [l for l in d.text if l.startswith('OUT {"event"')], d.text
