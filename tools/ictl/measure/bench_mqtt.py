"""MQTT figures: sealed QoS 1 publishes per second by the device client on the
unix port against paho-mqtt on CPython, same payload size, TLS, same
mosquitto, same run; and the heap the client keeps in an agent-like loop.

mqtt_qos1_rate_ratio = device rate / paho rate. Device: each message is a
reading sealed by ironclad.telemetry (CBOR, nonce counter, COSE_Encrypt0
AES-CCM) inside the timed loop, published with wait=False through the
client's in-flight window. paho: payloads of the same length, publish() from
the main thread with loop_start(), the same in-flight window. Best of
ROUNDS for each, the two alternating."""
import json
import os
import ssl
import tempfile
import threading
import time

from ictl import broker as fleet_broker
from ictl.sim import device as sim_device
from ictl import pki
from ictl.sim.hostile import DeviceRunner

# Messages per timed run. Each run ends with the same ~40 ms wait for its
# last PUBACKs on loopback (mosquitto's Nagle holding them until the client's
# delayed ACK), whichever client it is; over 5000 messages that fixed cost
# weighs on both rates far less than over 2000.
N = 5000
WINDOW = 16  # unacknowledged QoS 1 publishes in flight, both clients
ROUNDS = 9
HEAP_KIB = 256  # the rate does not depend on it; the module code (unix, 64-bit) does not fit 64 KiB

DEVICE = r'''
import os
from ironclad import nonce, telemetry
gc.collect()
modules = gc.mem_alloc()
c = client(timeout_s=10, max_inflight=A["window"], keepalive=60)
c.connect()
topic = "ironclad/%s/telemetry" % A["id"]
sealer = telemetry.Sealer(os.urandom(32), A["id"], nonce.Counter())
reading = {"seq": 0, "uptime_ms": 0, "temp_c": 21.5, "humidity_pct": 40, "pressure_hpa": 1013,
           "battery_mv": 3300, "rssi_dbm": -60, "heap_free": 30000, "interval_s": 2}


def run(n):
    t = time.ticks_us()
    for i in range(n):
        reading["seq"] = i
        reading["uptime_ms"] = time.ticks_ms()
        m = sealer.seal_reading(topic, reading)
        c.publish(topic, m, qos=1, wait=False)
    c.sync()
    return time.ticks_diff(time.ticks_us(), t), len(m)


run(200)  # warm-up: TLS session, counter block
for r in range(A["rounds"]):
    us, size = run(A["n"])
    out(rate=A["n"] * 1e6 / us, size=size)
    while not os_exists(A["dir"] + "/go%d" % r):
        time.sleep_ms(5)

# Agent-like loop: one sealed reading at a time, PUBACK awaited, then
# whatever arrived; what stays live after a collection is the client's
# (and the sealer's) steady heap, module code aside.
gc.collect()
before = gc.mem_alloc()
worst = 0
for i in range(300):
    reading["seq"] = i
    c.publish(topic, sealer.seal_reading(topic, reading), qos=1)
    c.check_msg()
    if i % 50 == 49:
        gc.collect()
        worst = max(worst, gc.mem_alloc())
out(steady=worst - modules, modules=modules, loop_growth=worst - before)
c.disconnect()
'''

OS_EXISTS = r'''
def os_exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False
'''


def paho_rate(b, cert, key, topic, size, n):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    c.tls_set(ca_certs=b.ca_path, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    done = threading.Event()
    acked = [0]

    def on_publish(cl, ud, mid, rc, props):
        acked[0] += 1
        if acked[0] == target[0]:
            done.set()
    c.on_publish = on_publish
    c.connect(b.host, b.port, keepalive=60)
    c.loop_start()
    try:
        payload = os.urandom(size)
        rates = []
        for warm, count in ((True, 200), (False, n)):
            acked[0] = 0
            target = [count]
            done.clear()
            t = time.perf_counter()
            for _ in range(count):
                c.publish(topic, payload, qos=1)
            if not done.wait(60):
                raise RuntimeError("paho: only %d of %d PUBACKs" % (acked[0], count))
            if not warm:
                rates.append(count / (time.perf_counter() - t))
        return rates[0]
    finally:
        c.loop_stop()
        c.disconnect()


def run(fig, tmp, args):
    work = tempfile.mkdtemp(prefix="mqtt-", dir=tmp)
    with fleet_broker.Broker(os.path.join(work, "broker")) as b:
        ca = b.load_ca()
        key, cert = pki.make_client_key_and_cert(ca, "bench-paho")  # host-made: bench only
        kp, cp = os.path.join(work, "paho.key"), os.path.join(work, "paho.crt")
        pki.write_key_pem(kp, key)
        pki.write_cert_pem(cp, cert)

        dev = DeviceRunner(b.pki_dir, os.path.join(work, "dev"), device_id="bench-dev", heap_kib=HEAP_KIB)
        simdir = os.path.join(work, "sim")
        sim_device.create(simdir)  # the nonce counter lives in its NVS
        dev.env["ESPSIM_DIR"] = simdir
        p = dev.start(OS_EXISTS + DEVICE, b.port, n=N, window=WINDOW, rounds=ROUNDS)
        device_rates, size, paho_rates, steady = [], None, [], None
        try:
            # Alternate: a device round, then a paho round while the device
            # waits for its go file.
            for line in p.stdout:
                if not line.startswith("OUT "):
                    continue
                o = json.loads(line[4:])
                if "rate" in o:
                    device_rates.append(o["rate"])
                    size = o["size"]
                    paho_rates.append(paho_rate(b, cp, kp, "ironclad/bench-paho/telemetry", size, N))
                    open(os.path.join(dev.last_dir, "go%d" % (len(device_rates) - 1)), "w").close()
                elif "steady" in o:
                    steady = o
            p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if p.returncode or len(device_rates) != ROUNDS or steady is None:
            raise RuntimeError("device bench failed: %s" % p.stderr.read()[-2000:])
    dr, pr = max(device_rates), max(paho_rates)
    fig.add("mqtt_qos1_rate_ratio", round(dr / pr, 2), "ratio",
            "sealed QoS 1 publishes/s, ironclad.mqtt on the unix port (%.0f/s: CBOR + nonce counter + "
            "COSE AES-CCM per message) / paho-mqtt %s on CPython (%.0f/s); %d-byte payloads, TLS 1.2, "
            "one mosquitto, in-flight window %d both, best of %d x %d" % (
                dr, _paho_version(), pr, size, WINDOW, ROUNDS, N))
    fig.add("mqtt_client_steady_heap_kib", round(steady["steady"] / 1024, 1), "KiB",
            "GC heap the client, its TLS context and the sealer keep live in a publish-and-check loop "
            "(after gc.collect, worst of 6 samples); module code aside (%.1f KiB on the 64-bit unix port, "
            "in flash when frozen on the ESP32); growth over 300 loops %d bytes" % (
                steady["modules"] / 1024, steady["loop_growth"]))


def _paho_version():
    import paho.mqtt

    return paho.mqtt.__version__
