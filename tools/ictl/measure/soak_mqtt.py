"""MQTT campaigns against the device client on the unix port (-X heapsize=64K,
the library as .mpy as the firmware freezes it).

fuzz: mutated and malformed broker packets. In-process, at full size: the
client parses from an in-memory stream (the same reader the TLS socket
feeds), seeded and reproducible. Over the socket, smaller: a TLS server
(ictl.sim.hostile) answers CONNECT and then sends a burst of mutated packets.
A failure is a crash (any exception but MQTTError, a MemoryError included),
a hang (a call past the client's time limit) or heap over budget (live heap
after a collection growing past BUDGET).

restarts: QoS 1 publishes through mosquitto restarts (Broker.restart); a
paho console with a persistent session must receive every one.
"""
import json
import os
import queue
import random
import ssl
import tempfile
import threading
import time

from ictl import broker as fleet_broker
from ictl import pki
from ictl.sim.hostile import CONNACK_OK, CONNECT, DeviceRunner, HostileBroker, packet, publish, varint

HEAP_KIB = 64
# Live heap the client may keep over its start: its buffers (4 KiB receive,
# 1 KiB write, 64 B read-ahead) and objects, the TLS context (3 KiB), the
# in-flight copies.
BUDGET = 16 * 1024
TOPIC = "ironclad/dev-1/cmd"


def add_args(p):
    p.add_argument("--mqtt-fuzz", type=int, default=120000, metavar="N",
                   help="mutated broker packets parsed in-process (default 120000)")
    p.add_argument("--mqtt-fuzz-conns", type=int, default=200, metavar="N",
                   help="TLS connections of the over-the-socket fuzz campaign, 5 packets each (default 200)")
    p.add_argument("--mqtt-messages", type=int, default=3000, metavar="N",
                   help="QoS 1 messages published through broker restarts (default 3000)")
    p.add_argument("--mqtt-restarts", type=int, default=5, metavar="N",
                   help="broker restarts during those messages (default 5)")
    p.add_argument("--mqtt-seed", type=int, default=1, help="fuzz seed (default 1)")


# ------------------------------------------------------------------ in-process fuzz

FUZZ = r'''
from binascii import hexlify


class Stream:
    # Broker bytes in from a view of the harness buffer (chunk: partial
    # reads), client bytes out (dropped). No allocation per input: the
    # harness must not be what runs out of heap.
    def __init__(self):
        self.src = None
        self.pos = self.end = self.chunk = 0

    def feed(self, src, n, chunk):
        self.src = src
        self.pos = 0
        self.end = n
        self.chunk = chunk

    def readinto(self, mv):
        k = min(len(mv), self.end - self.pos)
        if self.chunk:
            k = min(k, self.chunk)
        mv[:k] = self.src[self.pos:self.pos + k]
        self.pos += k
        return k

    def write(self, b):
        return len(b)

    def close(self):
        pass


seed = A["seed"] or 1
def rnd(n):
    # xorshift32, reproducible from the seed
    global seed
    x = seed
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    seed = x
    return x % n

def vint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)

def pkt(first, body):
    return bytes((first,)) + vint(len(body)) + body

def pub(topic, payload, qos=0, pid=1, flags=0):
    body = bytes((len(topic) >> 8, len(topic) & 0xFF)) + topic + (bytes((pid >> 8, pid & 0xFF)) if qos else b"") + payload
    return pkt(0x30 | flags | (qos << 1), body)

T = b"ironclad/dev-1/cmd"
CORPUS = [
    pub(T, b"hello"), pub(T, b"q1" * 20, 1, 7), pub(T, b"r", 0, 0, 1), pub(T, b"d", 1, 9, 8),
    pub(T, b"x" * 300, 1, 3), pub(b"ironclad/dev-1/update", b"u" * 1000), pub(T, b""),
    b"\x40\x02\x00\x01", b"\x40\x02\x00\x02", b"\x40\x02\x12\x34", b"\xd0\x00",
    b"\x90\x03\x00\x05\x01", b"\x20\x02\x00\x00", b"\x50\x02\x00\x01", b"\xb0\x02\x00\x01",
]
LENS = (b"\xff\xff\xff\xff\x7f", b"\xff\xff\xff\x7f", b"\x00", b"\x80\x80\x80\x80\x01", b"\x81\x20", b"\xff\x1f")
BUF = bytearray(4096)
MV = memoryview(BUF)
TMP = bytearray(64)

def put(i, b):
    n = min(len(b), len(BUF) - i)
    MV[i:i + n] = b[:n] if n < len(b) else b
    return i + n

def mutate():
    # Build 1-3 corpus packets in BUF and mutate them in place: -> length.
    n = 0
    for _ in range(1 + rnd(3)):
        n = put(n, CORPUS[rnd(len(CORPUS))])
    k = rnd(10)
    if k == 0:
        for _ in range(1 + rnd(4)):
            BUF[rnd(n)] ^= 1 << rnd(8)
    elif k == 1:
        for _ in range(1 + rnd(3)):
            BUF[rnd(n)] = rnd(256)
    elif k == 2:
        n = rnd(n)
    elif k == 3:
        # the first packet's remaining length: huge, 5 bytes, zero, non-minimal, over the cap
        v = LENS[rnd(len(LENS))]
        MV[1 + len(v):n + len(v) - 1] = MV[2:n]
        MV[1:1 + len(v)] = v
        n += len(v) - 1
    elif k == 4 and n > 4:
        BUF[2] = rnd(256)
        BUF[3] = rnd(256)
    elif k == 5:
        BUF[0] = rnd(256)
    elif k == 6:
        i = rnd(n + 1)
        m = 1 + rnd(16)
        MV[i + m:n + m] = MV[i:n]
        for j in range(i, i + m):
            BUF[j] = rnd(256)
        n += m
    elif k == 7:
        n = 1 + rnd(64)
        for j in range(n):
            BUF[j] = rnd(256)
    elif k == 8:
        i = rnd(n)
        m = min(1 + rnd(32), n - i)
        MV[n:n + m] = MV[i:i + m]
        n += m
    return n

class Count:
    n = 0

    def __call__(self, *a):
        self.n += 1


got = Count()
c = MQTTClient("dev-1", "127.0.0.1", 1, context(), max_inflight=4)
c.set_callback(got)
LIMIT_US = A["limit_ms"] * 1000
gc.collect()
start = gc.mem_alloc()
crash = hang = heap = done = clean = nomem = 0
worst_us = 0
live = 0
stream = Stream()
for i in range(A["n"]):
    n = mutate()
    stream.feed(MV, n, rnd(4) if rnd(2) else 0)
    c._attach(stream)
    del c._inflight[:]
    t0 = time.ticks_us()
    try:
        c.publish(b"ironclad/dev-1/telemetry", b"m", qos=1, wait=False)
        c.publish(b"ironclad/dev-1/telemetry", b"n", qos=1, wait=False)
        for _ in range(8):
            c.wait_msg(0)
    except MQTTError as e:
        if e.reason == "closed by broker":
            clean += 1  # every packet parsed, the input ended between two
        elif e.reason == "no_memory":
            nomem += 1
    except MemoryError:
        crash += 1
        out(failure=["MemoryError", A["seed"], i, hexlify(BUF[:min(n, 48)]).decode()])
    except Exception as e:
        crash += 1
        out(failure=[repr(e), A["seed"], i, hexlify(BUF[:min(n, 48)]).decode()])
    dt = time.ticks_diff(time.ticks_us(), t0)
    worst_us = max(worst_us, dt)
    if dt > LIMIT_US:
        hang += 1
        out(failure=["hang %d us" % dt, A["seed"], i, hexlify(BUF[:min(n, 48)]).decode()])
    done += 1
    if i % 2000 == 1999:
        gc.collect()
        live = max(live, gc.mem_alloc() - start)
        if gc.mem_alloc() - start > A["budget"]:
            heap += 1
            out(failure=["heap %d" % (gc.mem_alloc() - start), A["seed"], i, ""])
gc.collect()
live = max(live, gc.mem_alloc() - start)
out(fuzz=done, crash=crash, hang=hang, heap=heap, worst_us=worst_us, live=live, clean=clean, delivered=got.n, nomem=nomem,
    events=events.head()[0])  # (a count: decoding every record needs heap this 64 KiB run lacks)
'''


def fuzz_inprocess(pki_dir, workdir, n, seed, limit_ms=200, chunk=20000):
    """In-process fuzz in runs of `chunk` inputs (one process each, seeds
    seed, seed+1, ...). Returns a dict: inputs, failures, worst_us, live (peak
    bytes), nomem (inputs whose payload found no heap block: dropped with
    no_memory), clean (inputs parsed without a violation), notes."""
    dev = DeviceRunner(pki_dir, workdir, heap_kib=HEAP_KIB)
    st = dict(inputs=0, failures=0, worst_us=0, live=0, nomem=0, clean=0, notes=[])
    k = 0
    while st["inputs"] < n:
        m = min(chunk, n - st["inputs"])
        r = dev.run(FUZZ, 1, timeout=600, n=m, seed=seed + k, limit_ms=limit_ms, budget=BUDGET)
        k += 1
        res = [x for x in r.out if "fuzz" in x]
        if not r.ok or not res:
            st["failures"] += 1
            st["notes"].append("fuzz process (seed %d) died: %s" % (seed + k - 1, r.text[-400:]))
            st["inputs"] += m
            continue
        o = res[0]
        st["inputs"] += o["fuzz"]
        st["failures"] += o["crash"] + o["hang"] + o["heap"]
        st["worst_us"] = max(st["worst_us"], o["worst_us"])
        st["live"] = max(st["live"], o["live"])
        st["nomem"] += o["nomem"]
        st["clean"] += o["clean"]
        st["notes"] += [str(f) for f in r.get("failure")]
    return st


# ------------------------------------------------------------------ over-the-socket fuzz

SOCKET = r'''
c = client(timeout_s=A["timeout_s"], backoff=Backoff(5, 20), max_inflight=4)
c.set_callback(lambda t, m: None)
conns = 0
longest = 0
live = 0
end = time.ticks_add(time.ticks_ms(), A["run_ms"])
was = False
i = 0
while conns < A["conns"] and time.ticks_diff(end, time.ticks_ms()) > 0:
    t0 = time.ticks_ms()
    up = c.maintain()
    if up and not was:
        conns += 1
        try:
            c.publish("ironclad/dev-1/telemetry", b"m", qos=1, wait=False)
        except MQTTError:
            pass
    was = up
    longest = max(longest, time.ticks_diff(time.ticks_ms(), t0))
    i += 1
    if i % 50 == 0:
        gc.collect()
        live = max(live, gc.mem_alloc() - BASE_HEAP)
    time.sleep_ms(1)
gc.collect()
live = max(live, gc.mem_alloc() - BASE_HEAP)
out(conns=conns, longest_ms=longest, live=live)
'''


def mutated_packets(rng, k):
    """k mutated broker packets, host side (random.Random)."""
    corpus = [publish(TOPIC, b"hello"), publish(TOPIC, b"q" * 40, qos=1, pid=7), b"\x40\x02\x00\x01",
              b"\xd0\x00", b"\x90\x03\x00\x05\x01", publish(TOPIC, b"z" * 600, qos=1, pid=2)]
    out = []
    for _ in range(k):
        p = bytearray(rng.choice(corpus))
        how = rng.randrange(6)
        if how == 0:
            for _ in range(rng.randrange(1, 4)):
                p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
        elif how == 1:
            p = p[:rng.randrange(len(p))]
        elif how == 2:
            p = p[:1] + rng.choice([b"\xff\xff\xff\xff\x7f", b"\xff\xff\xff\x7f", varint(rng.randrange(1 << 14))]) + p[2:]
        elif how == 3:
            p[0] = rng.randrange(256)
        elif how == 4:
            p = bytearray(rng.randbytes(rng.randrange(1, 40)))
        out.append(bytes(p))
    return out


def fuzz_socket(pki_dir, workdir, conns, seed, timeout_s=0.5):
    """Returns a dict: packets (sent), failures, longest_ms (a maintain()
    call), live (peak bytes), notes."""
    rng = random.Random(seed)
    sent = [0]

    def script(conn):
        conn.expect(CONNECT)
        burst = mutated_packets(rng, 5)
        conn.send(CONNACK_OK + b"".join(burst))
        sent[0] += len(burst)
        conn.hold(timeout_s * 3)

    dev = DeviceRunner(pki_dir, workdir, heap_kib=HEAP_KIB)
    with HostileBroker(pki_dir, script) as hb:
        r = dev.run(SOCKET, hb.port, timeout=conns * 5 + 60, timeout_s=timeout_s, conns=conns,
                    run_ms=int(conns * 3000 + 10000))
        errors = list(hb.errors)
    o = r.out[-1] if r.out else {}
    failures = 0
    notes = []
    if not r.ok or "conns" not in o:
        failures += 1
        notes.append("socket fuzz process died: %s" % r.text[-400:])
    else:
        if o["conns"] < conns:
            failures += 1
            notes.append("only %d of %d connections made" % (o["conns"], conns))
        # maintain() may spend one connect (timeout_s) plus one packet deadline
        if o["longest_ms"] > 2 * timeout_s * 1000 + 500:
            failures += 1
            notes.append("a maintain() call took %d ms" % o["longest_ms"])
        if o["live"] > BUDGET:
            failures += 1
            notes.append("live heap %d bytes" % o["live"])
    if errors:
        notes += errors
    return dict(packets=sent[0], failures=failures, longest_ms=o.get("longest_ms"), live=o.get("live"), notes=notes)


# ------------------------------------------------------------------ broker restarts

RESTARTS = r'''
c = client(timeout_s=2, keepalive=10, backoff=Backoff(100, 1000), max_inflight=8)
topic = "ironclad/dev-1/telemetry"
class Count:
    n = 0

    def __call__(self, *a):
        self.n += 1


acks = Count()
c.set_ack_callback(acks)
seq = 0
drops = 0
resent = 0
was = False
end = time.ticks_add(time.ticks_ms(), A["run_ms"])
while time.ticks_diff(end, time.ticks_ms()) > 0 and (seq < A["n"] or c.inflight() or not c.connected):
    up = c.maintain()
    if was and not up:
        drops += 1
        resent += c.inflight()  # resent with DUP after the reconnect
    was = up
    if not up:
        time.sleep_ms(20)
        continue
    if seq < A["n"]:
        try:
            c.publish(topic, b"%d" % seq, qos=1, wait=False)
            seq += 1
        except MQTTError:
            pass  # not sent: the same seq again once reconnected
        time.sleep_ms(A["gap_ms"])
    else:
        try:
            c.sync()  # the rest of the PUBACKs
        except MQTTError:
            pass  # dropped: maintain() reconnects and resends
out(sent=seq, acks=acks.n, drops=drops, resent=resent, inflight=c.inflight())
c.disconnect()
'''


def restarts(workdir, n, count, interval=1.0):
    """Publish n QoS 1 messages while the broker restarts `count` times,
    `interval` seconds apart (each restart its own outage: the device has
    reconnected before the next); the device paces its messages over the
    whole time. Returns (restarts done, lost, notes)."""
    gap_ms = max(1, int((count + 1) * interval * 1000 / n))
    b = fleet_broker.Broker(os.path.join(workdir, "broker"))
    b.start()
    notes = []
    try:
        got = set()
        q = queue.Queue()
        import paho.mqtt.client as mqtt

        con = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pki.CONSOLE_ID, clean_session=False)
        con.tls_set(ca_certs=b.ca_path, certfile=b.console_cert_path, keyfile=b.console_key_path,
                    cert_reqs=ssl.CERT_REQUIRED)
        con.reconnect_delay_set(0.1, 0.5)
        ready = threading.Event()
        con.on_connect = lambda c, u, f, rc, p: (c.subscribe("ironclad/dev-1/telemetry", 1), ready.set())
        con.on_message = lambda c, u, m: q.put(m.payload)
        con.connect(b.host, b.port, keepalive=10)
        con.loop_start()
        if not ready.wait(10):
            raise RuntimeError("console did not connect")
        time.sleep(0.3)
        dev = DeviceRunner(b.pki_dir, os.path.join(workdir, "dev"), heap_kib=HEAP_KIB)
        p = dev.start(RESTARTS, b.port, n=n, gap_ms=gap_ms, run_ms=n * gap_ms * 3 + count * 5000 + 30000)
        done = 0
        while done < count and p.poll() is None:
            time.sleep(interval)
            b.restart()
            done += 1
        out, err = p.communicate(timeout=n * gap_ms * 3 / 1000 + count * 5 + 60)
        res = [json.loads(l[4:]) for l in out.splitlines() if l.startswith("OUT ")]
        if p.returncode or not res:
            notes.append("device died: %s" % (out + err)[-400:])
            return done, n, notes
        res = res[-1]
        deadline = time.monotonic() + 15
        while len(got) < n and time.monotonic() < deadline:
            try:
                got.add(int(q.get(timeout=0.5)))
            except queue.Empty:
                pass
        con.loop_stop()
        con.disconnect()
        if res["sent"] != n:
            notes.append("device sent %d of %d" % (res["sent"], n))
        lost = len(set(range(n)) - got)
        notes.append("device: %d acks, %d drops, %d messages in flight at a drop (resent), %d left in flight" % (
            res["acks"], res["drops"], res["resent"], res["inflight"]))
        return done, lost, notes
    finally:
        b.stop()


# ------------------------------------------------------------------ soak entry

def run(fig, args):
    with tempfile.TemporaryDirectory(prefix="soak-mqtt-") as tmp:
        pki_dir = os.path.join(tmp, "pki")
        pki.init_ca(pki_dir, dev=True)
        a = fuzz_inprocess(pki_dir, os.path.join(tmp, "fuzz"), args.mqtt_fuzz, args.mqtt_seed)
        b = fuzz_socket(pki_dir, os.path.join(tmp, "sock"), args.mqtt_fuzz_conns, args.mqtt_seed)
        for note in (a["notes"] + b["notes"])[:20]:
            print("  fuzz:", note)
        fig.add("fuzz_packets", a["inputs"] + b["packets"], "packets",
                "mutated/malformed broker packets: %d inputs (1-3 packets each, seeds from %d) parsed in-process "
                "from a stream, %d without a violation, %d dropped for no heap block (no_memory); %d packets over "
                "TLS from ictl.sim.hostile in %d connections; client under -X heapsize=%dK" % (
                    a["inputs"], args.mqtt_seed, a["clean"], a["nomem"], b["packets"], args.mqtt_fuzz_conns, HEAP_KIB))
        fig.add("fuzz_failures", a["failures"] + b["failures"], "count",
                "crash (any exception but MQTTError, MemoryError included), hang (in-process input over 200 ms: "
                "worst %d us; a socket maintain() past its limit: longest %s ms), live heap over %d bytes "
                "(peaks %s, %s)" % (a["worst_us"], b["longest_ms"], BUDGET, a["live"], b["live"]))
        done, lost, notes3 = restarts(os.path.join(tmp, "restarts"), args.mqtt_messages, args.mqtt_restarts)
        for note in notes3:
            print("  restarts:", note)
        fig.add("broker_restarts", done, "count",
                "mosquitto restarts (SIGTERM, same port and persistence) while the device published %d QoS 1 "
                "messages" % args.mqtt_messages)
        fig.add("qos1_lost", lost, "count",
                "QoS 1 messages acknowledged to nobody: published by the device client through the restarts "
                "and never received by a persistent-session paho console")
    return a["failures"] + b["failures"] + lost
