"""The agent under hostile input (issue 14): a property test of the whole
device. One virtual board runs the real agent (app v1, verified boot, the
64 KiB app heap) against the real mosquitto; a second operator identity on
the broker publishes random and mutated messages, QoS 0 and 1, on every
topic the device subscribes to (cmd and update):

  cmd     random bytes; random CBOR; COSE_Encrypt0-shaped junk; genuine
          commands with bits flipped, cut short or extended; genuine
          commands the device must refuse (an op not allowed, bad
          arguments, a replay of one it accepted); oversized ones.
  update  random bytes; b"M" + random CBOR; genuine signed metadata with
          bits flipped or cut (the signature then fails); genuine metadata
          for another device, or expired; chunks of unknown updates; an
          empty message; a message over the device's max_packet (the
          client drops the connection: it must come back).

Every `--agent-batch` messages the fleet console sends a genuine "read"
command and waits for its reply: that paces the fuzzer to the device (so
the broker never drops queued messages) and proves the agent still obeys.

Properties, each a failure when broken: the agent never resets (the
process never ends), never records agent/crash, never spends a trial
attempt (the boot state is unchanged); every "read" is answered; readings
keep arriving; the event log the console receives has at most one event
per (kind, reason) per window (cmd: until a command is accepted; update:
until metadata is accepted, never here; mqtt: once per outage) and no
chain gap or alarm.

The malformed-bytes part cannot pass through mosquitto, which checks what
it forwards; a broker that sends it drops the connection at each one, and
the backoff then spaces the reconnects by minutes. So it runs in-process
(raw_inputs): the real Agent (app/agent.py, on a simulated device, with a
stand-in identity and trust anchors) whose MQTT client reads each input
from an in-memory stream, the seam soak_mqtt's client fuzz uses too: PUBLISH
packets with random topic bytes (not UTF-8, overlong forms, surrogates,
NUL, wildcards, too long), random flags and packet ids, random bodies on
the agent's own topics (up to past max_packet), truncated packets, bad
lengths, stray packet types. Property: nothing but MQTTError ever leaves
the client (the agent's callback included), no reset, and at most one
event per (kind, reason) in the whole run (no command or metadata is ever
accepted there, and the client's once-per-outage filter never resets).

`make test` runs a slice (tests/host/test_agent_fuzz.py); `ictl soak --only
agent` runs the whole campaign."""
import os
import random
import shutil
import ssl
import tempfile
import threading
import time

import cbor2
import paho.mqtt.client as mqtt

from ictl import broker as fleet_broker
from ictl.sim import factory
from ictl import console as fleet_console
from ictl.sim import device as sim_device
from ictl import image as app_image
from ictl import update as upd
from ictl.sim.demo import Keys, build_app
from ictl.sim.fleet import Device, provision_all

DEV = "fuzz-0001"
MAX_PACKET = 4352  # the agent's max_packet (ironclad.update.MAX_PACKET)
REPLY_WAIT_S = 20.0


def add_args(p):
    p.add_argument("--agent-fuzz", type=int, default=20000, metavar="N",
                   help="hostile messages published to the agent through mosquitto (default 20000)")
    p.add_argument("--agent-batch", type=int, default=100, metavar="N",
                   help="messages between two genuine 'read' commands (default 100)")
    p.add_argument("--agent-raw", type=int, default=50000, metavar="N",
                   help="malformed MQTT inputs (1-3 packets each) fed to the agent in-process (default 50000)")
    p.add_argument("--agent-seed", type=int, default=1, help="fuzz seed (default 1)")


# ------------------------------------------------------------------ messages


def _rand_cbor(rnd, depth=0):
    k = rnd.randrange(9 if depth < 3 else 6)
    if k == 0:
        return rnd.randrange(-(1 << 40), 1 << 40)
    if k == 1:
        return rnd.randbytes(rnd.randrange(40))
    if k == 2:
        return "".join(chr(rnd.randrange(32, 0x2FFF)) for _ in range(rnd.randrange(12)))
    if k == 3:
        return rnd.choice([True, False, None])
    if k == 4:
        return rnd.choice([0, 1, 4, 5, 6, 16, 18, -37, 0xFFFFFFFF, -(1 << 63)])
    if k == 5:
        return rnd.random() * 1e6  # the device refuses floats
    if k == 6:
        return [_rand_cbor(rnd, depth + 1) for _ in range(rnd.randrange(6))]
    if k == 7:
        return {_rand_cbor(rnd, 3) if rnd.random() < 0.5 else rnd.choice(["op", "iat", "v", "id", 1, 4]):
                _rand_cbor(rnd, depth + 1) for _ in range(rnd.randrange(6))}
    return cbor2.CBORTag(rnd.choice([16, 18, 96, 0, 55799]), _rand_cbor(rnd, depth + 1))


def _cbor(rnd):
    try:
        return cbor2.dumps(_rand_cbor(rnd))
    except (TypeError, ValueError):  # an unhashable key drawn: plain bytes instead
        return rnd.randbytes(20)


def _mutate(rnd, msg):
    b = bytearray(msg)
    for _ in range(rnd.randrange(1, 4)):
        k = rnd.randrange(5)
        if k == 0 and b:  # flip bits
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
        elif k == 1 and b:  # a random byte
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif k == 2 and len(b) > 1:  # cut short
            del b[rnd.randrange(1, len(b)):]
        elif k == 3:  # extended
            b += rnd.randbytes(rnd.randrange(1, 40))
        elif b:  # a slice repeated
            i = rnd.randrange(len(b))
            b[i:i] = b[i:i + rnd.randrange(1, 16)]
    return bytes(b) if bytes(b) != msg else bytes(b) + b"\x00"


class Corpus:
    """Genuine material to mutate: commands sealed by the fleet console,
    update metadata signed with the image key."""

    def __init__(self, con, keys, v1, v2, pub, rnd):
        self.rnd = rnd
        self.cmds = [con.command(DEV, "read")[1] for _ in range(4)]
        self.refused = [con.command(DEV, "format")[1], con.command(DEV, "interval", s=0)[1],
                        con.command(DEV, "interval")[1], con.command(DEV, "read", extra=1)[1]]
        u = upd.Update.create(v2, base=v1)
        self.metas = [u.metadata(DEV, pub, keys.signing, keys.key_id)]
        other = upd.Update.create(v2, base=v1)
        old = upd.Update.create(v2, base=v1, iat=int(time.time()) - 400 * 86400, ttl=86400)
        # Genuine, but never for this device now: another device's; expired.
        self.foreign = [other.metadata("fuzz-other", pub, keys.signing, keys.key_id),
                        old.metadata(DEV, pub, keys.signing, keys.key_id)]
        self.accepted = []  # markers the device accepted: replays of them are refused

    def cmd(self):
        r = self.rnd
        k = r.random()
        if k < 0.2:
            return r.randbytes(r.randrange(0, 300))
        if k < 0.4:
            return _cbor(r)
        if k < 0.55:  # COSE_Encrypt0-shaped, random inside
            return cbor2.dumps(cbor2.CBORTag(16, [cbor2.dumps({1: 10}), {6: r.randbytes(r.randrange(9))},
                                                  r.randbytes(r.randrange(60))]))
        if k < 0.8:
            return _mutate(r, r.choice(self.cmds))
        if k < 0.97:
            return r.choice(self.refused + self.accepted[-3:])
        return r.randbytes(r.randrange(257, 4000))  # too long for a command

    def update(self):
        r = self.rnd
        k = r.random()
        if k < 0.15:
            return r.randbytes(r.randrange(1, 400))
        if k < 0.3:
            return b"M" + _cbor(r)
        if k < 0.5:
            return _mutate(r, r.choice(self.metas))
        if k < 0.55:
            return r.choice(self.foreign)
        if k < 0.75:
            body = r.randbytes(16) + r.randrange(1 << 32).to_bytes(4, "big") + r.randbytes(r.randrange(0, 200))
            return b"C" + body[:r.randrange(0, len(body) + 1)]
        if k < 0.95:
            return bytes([r.randrange(256)]) + r.randbytes(r.randrange(0, 100))
        return b""


# ------------------------------------------------------------------ the campaign


class _Publisher:
    """The hostile operator: paho with its own identity (the updater's)."""

    def __init__(self, br):
        kp, cp = upd.updater_credentials(br.pki_dir)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=upd.UPDATER_ID)
        self.c.tls_set(ca_certs=br.ca_path, certfile=cp, keyfile=kp, cert_reqs=ssl.CERT_REQUIRED)
        self.c.max_inflight_messages_set(50)
        ok = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: ok.set()
        self.c.connect(br.host, br.port)
        self.c.loop_start()
        if not ok.wait(20):
            raise RuntimeError("fuzz publisher: no CONNACK")
        self.last = None

    def publish(self, topic, msg, qos):
        self.last = self.c.publish(topic, msg, qos=qos)

    def drain(self, timeout=30):
        if self.last is not None:
            self.last.wait_for_publish(timeout)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class _Watch:
    """What the console sees of the device, collected on a thread."""

    def __init__(self, con):
        self.con = con
        self.lock = threading.Lock()
        self.readings = 0
        self.replies = {}
        self.events = []
        self.alarms = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=con.run, args=(self._on, self.stop), daemon=True)
        self.t.start()

    def _on(self, m):
        if m.device != DEV:
            return
        with self.lock:
            if m.alarm:
                self.alarms.append(m.text)
            elif m.kind == "telemetry":
                self.readings += 1
            elif m.kind == "reply" and isinstance(m.body, dict):
                self.replies[m.body.get("cmd")] = m.body.get("ok")
            elif m.kind == "events" and m.records:
                self.events.extend(m.records)

    def close(self):
        self.stop.set()
        self.t.join(5)


def window_excess(records):
    """Events beyond one per (kind, reason) per window (module doc)."""
    seen = set()
    excess = []
    for r in sorted(records, key=lambda r: r["seq"]):
        if r["kind"] == "cmd" and r["outcome"] == "ok":
            seen = {k for k in seen if k[0] != "cmd"}  # a command accepted: cmd's window ends
            continue
        if r["outcome"] not in ("rejected", "failed") or r["kind"] == "mqtt":
            continue
        k = (r["kind"], r["reason"])
        if k in seen:
            excess.append("%s/%s #%d" % (k[0], k[1], r["seq"]))
        seen.add(k)
    return excess


def campaign(root, messages, batch=100, seed=1, say=print):
    """Run the campaign in root (removed first); returns a dict of results."""
    rnd = random.Random(seed)
    root = os.path.abspath(root)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    operators = fleet_broker.DEFAULT_OPERATORS + (upd.UPDATER_ID,)
    with fleet_broker.Broker(os.path.join(root, "broker"), operators=operators) as br:
        keys = Keys(root)
        devdir = os.path.join(root, "devices", DEV)
        sim_device.create(devdir, flash_encryption=True)  # a field board: production
        hwid = sim_device.load(devdir)["hwid"]
        v1 = build_app("1.0.0", 1, keys, os.path.join(root, "app-v1.img"), hwid)
        v2 = build_app("2.0.0", 2, keys, os.path.join(root, "app-v2.img"), hwid)
        factory.trust_device(devdir, [(keys.key_id, keys.signing.public_key())])
        factory.flash_image(devdir, v1)
        provision_all([DEV], [devdir], br, keys, os.path.join(root, "provisioning.jsonl"), workers=1)
        con = fleet_console.Console.for_broker(br, keys.fleet, os.path.join(root, "console-state.json"))
        con.start()
        dev = Device(DEV, devdir)
        dev.power_on()
        pub = None
        watch = None
        res = {"messages": 0, "by_topic": {"cmd": 0, "update": 0}, "oversized": 0, "markers": 0,
               "unanswered": 0}
        try:
            if not con.wait_device(DEV, timeout=120):
                raise RuntimeError("the device never came online: %s" % _tail(devdir))
            watch = _Watch(con)
            end = time.monotonic() + 60
            while not watch.readings and time.monotonic() < end:
                time.sleep(0.05)  # healthy: the first reading is out, the boot confirmed
            boot0 = _boot(devdir)
            corpus = Corpus(con, keys, v1, v2, con.devices[DEV]["pub"], rnd)
            pub = _Publisher(br)
            topics = {k: fleet_broker.device_topic(br.prefix, DEV, k) for k in ("cmd", "update")}
            t0 = time.monotonic()
            sent = 0
            while sent < messages:
                n = min(batch, messages - sent)
                for i in range(n):
                    kind = "cmd" if rnd.random() < 0.5 else "update"
                    msg = corpus.cmd() if kind == "cmd" else corpus.update()
                    if i == n - 1 and rnd.random() < 0.02:
                        # Over the device's max_packet: the client drops the
                        # connection (mqtt/too_big) and comes back. Last in a
                        # batch, so the marker below waits for the reconnect.
                        kind, msg = "update", b"C" + rnd.randbytes(MAX_PACKET)
                        res["oversized"] += 1
                    pub.publish(topics[kind], msg, qos=1 if rnd.random() < 0.7 else 0)
                    res["by_topic"][kind] += 1
                sent += n
                pub.drain()
                if not _marker(con, watch, corpus, res):
                    say("agent fuzz: no answer to 'read' after %d messages: %s" % (sent, _tail(devdir)))
                if dev.proc.poll() is not None:
                    say("agent fuzz: the device process ended (rc %s) after %d messages" % (dev.proc.returncode, sent))
                    break
                if sent % (batch * 20) == 0:
                    say("agent fuzz: %d messages, %d readings, %.0f s" % (sent, watch.readings, time.monotonic() - t0))
            res["messages"] = sent
            res["seconds"] = time.monotonic() - t0
            time.sleep(3)  # the last events on their way
            _marker(con, watch, corpus, res)
            res["ended"] = dev.proc.poll() is not None
            res["boot_changed"] = _boot(devdir) != boot0
        finally:
            if pub:
                pub.close()
            if watch:
                watch.close()
            dev.stop()
            con.stop()
    log = _read_log(devdir)
    with watch.lock:
        ev = list(watch.events)
        res["readings"] = watch.readings
        res["alarms"] = list(watch.alarms)
    res["events"] = len(ev)
    res["crash_events"] = sum(1 for r in ev if r["kind"] == "agent")
    res["resets"] = dev.boots - 1 + (1 if res["ended"] else 0)
    res["excess"] = window_excess(ev)
    res["mqtt_events"] = sum(1 for r in ev if r["kind"] == "mqtt")
    res["tracebacks"] = log.count("Traceback")
    res["crashes"] = res["resets"] + res["crash_events"] + (1 if res["boot_changed"] else 0) + res["tracebacks"]
    # Readings: one every 2 s by default; at least one per 10 s of campaign.
    res["readings_short"] = res["readings"] < max(1, int(res["seconds"] / 10))
    res["reasons"] = sorted({"%s/%s" % (r["kind"], r["reason"]) for r in ev if r["outcome"] == "rejected"})
    return res


def _marker(con, watch, corpus, res):
    """A genuine 'read' command; True once its reply arrived. Sent again
    (a new counter) while the device is reconnecting."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        topic, msg, ctr = con.command(DEV, "read")
        con._client.publish(topic, msg, qos=1)
        res["markers"] += 1
        t = time.monotonic() + REPLY_WAIT_S
        while time.monotonic() < t:
            with watch.lock:
                if ctr in watch.replies:
                    corpus.accepted.append(msg)
                    return True
            time.sleep(0.02)
    res["unanswered"] += 1
    return False


def _boot(devdir):
    # What a reset on trial, or a rollback, would change (not the record's
    # sequence number or the floor, which a confirmation moves).
    st = factory.read_bootstate(devdir) or {}
    return {k: st.get(k) for k in ("active", "trial", "attempts", "fallback")}


def _read_log(devdir):
    try:
        with open(os.path.join(devdir, "console.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(devdir, n=600):
    return _read_log(devdir)[-n:]


# ------------------------------------------------------------------ raw bytes, in-process

RAW = r"""
import gc, io, json, os, struct, sys, vfs, esp32
P = esp32.Partition
bdev = P.find(P.TYPE_DATA, label="vfs")[0]
vfs.VfsLfs2.mkfs(bdev)
vfs.mount(vfs.VfsLfs2(bdev), "/flash")
os.mkdir("/flash/ironclad")
from ironclad import events, spool, update
events.PATH = "/flash/ironclad/events.bin"
events.SENT_PATH = "/flash/ironclad/events.sent"
update.STORE = "/flash/ironclad/update"
cfg = json.load(open(sys.argv[1]))


class Trust:  # stand-in trust anchors (the frozen ironclad_trust)
    KEYS = {}
    RETIRED = ()
    HWID = "esp32-sim"


sys.modules["ironclad_trust"] = Trust
import ssl
import agent
from ironclad.mqtt import MQTTError

agent.Spool = lambda: spool.Spool("/flash/ironclad/spool")


class Me:
    device_id = cfg["dev"]
    host, port, hostname, ntp = "127.0.0.1", 1, "localhost", None
    fleet_data_pub = bytes.fromhex(cfg["fleet"])

    class _ks:
        def get(name):
            return bytes.fromhex(cfg["key"]) if name == "device_key" else b"cert"

    def topic(self, kind):
        return "ironclad/%s/%s" % (self.device_id, kind)

    def tls_context(self):
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.verify_mode = ssl.CERT_REQUIRED
        return c


class Stream:
    def __init__(self, data):
        self.inp = io.BytesIO(data)

    def readinto(self, mv):
        return self.inp.readinto(mv)  # at the end: the broker closed

    def write(self, b):
        return len(b)

    def close(self):
        pass


a = agent.Agent(Me(), resume=False)
c = a.client
a.online = False  # no reply publishes: they would wait for a PUBACK nobody sends
gc.collect()
n = crashes = drops = 0
f = open(cfg["inputs"], "rb")
hdr = bytearray(4)
while f.readinto(hdr) == 4:
    data = f.read(struct.unpack("<I", hdr)[0])
    n += 1
    c._attach(Stream(data))
    try:
        for _ in range(8):
            if c.check_msg() is None or not c.connected:
                break
    except MQTTError:
        drops += 1
    except Exception as e:  # the property under test: nothing else leaves the client
        crashes += 1
        print("CRASH", n, repr(e))
        sys.print_exception(e)
    c._close()
    data = None
    if n % 500 == 0:
        gc.collect()
gc.collect()
ev = [(e["kind"], e["reason"]) for e in events.since(0)]
print("RESULT", json.dumps({"inputs": n, "crashes": crashes, "drops": drops, "events": ev,
                            "free": gc.mem_free()}))
"""


def _topic_bytes(rnd, own):
    k = rnd.randrange(10)
    if k == 0:
        return rnd.randbytes(rnd.randrange(1, 300))  # any bytes: mostly not UTF-8
    if k == 1:  # the agent's own topic with something ill-formed inside
        bad = rnd.choice([b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                          b"\x00", b"+", b"#", b"\xc3", b"\xf8\x88\x80\x80\x80"])
        i = rnd.randrange(len(own) + 1)
        return own[:i] + bad + own[i:]
    if k == 2:
        return "".join(chr(rnd.randrange(1, 0x10FFFF)) for _ in range(rnd.randrange(1, 20))).encode("utf-8",
                                                                                              "surrogatepass")
    if k == 3:
        return b"a" * rnd.choice([256, 257, 1000])
    return own


def _raw_packet(rnd, topics):
    from ictl.sim.hostile import packet, varint

    k = rnd.random()
    if k < 0.7:
        topic = _topic_bytes(rnd, rnd.choice(topics))
        qos = rnd.choice([0, 0, 1, 1, 1, 2, 3])
        flags = (qos << 1) | rnd.choice([0, 0, 0, 8]) | rnd.choice([0, 0, 1])
        pid = rnd.choice([0, 1, rnd.randrange(65536)])
        n = rnd.choice([0, 1, 20, 100, rnd.randrange(600), rnd.randrange(4400)])
        first = topic[:1]
        body = rnd.choice([b"M", b"C", b"", first]) + rnd.randbytes(n)
        pkt = packet(0x30 | flags, len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"") + body)
    elif k < 0.8:
        pkt = bytes([rnd.randrange(256)]) + varint(rnd.randrange(8)) + rnd.randbytes(rnd.randrange(8))
    elif k < 0.9:
        pkt = bytes([0x30 | rnd.randrange(16)]) + rnd.choice([b"\xff\xff\xff\xff\x7f", b"\x80\x00", b"\xff\x7f",
                                                             varint(rnd.randrange(1 << 21))])
    else:
        pkt = rnd.choice([b"\xd0\x00", b"\x40\x02\x00\x01", b"\x90\x03\x00\x01\x00", b"\x20\x02\x00\x00"])
    if rnd.random() < 0.1:
        pkt = pkt[:rnd.randrange(1, len(pkt) + 1)]  # truncated
    return pkt


def raw_inputs(root, inputs, seed=1):
    """The in-process part (module doc): -> dict (inputs, crashes, drops,
    events, excess, rc, out)."""
    import json
    import struct

    from cryptography.hazmat.primitives.asymmetric import ec

    from ictl import ROOT, fleetkeys
    from ictl.sim.updatelab import device_path, run_mp

    rnd = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    devdir = os.path.join(root, "dev")
    sim_device.create(devdir, force=True, flash_encryption=True)  # a field board: production
    dkey = ec.generate_private_key(ec.SECP256R1())
    fleet = fleetkeys.ensure(os.path.join(root, "fleet"))
    topics = [("ironclad/%s/%s" % (DEV, k)).encode() for k in ("cmd", "update", "cmd", "update", "telemetry")]
    path = os.path.join(root, "inputs.bin")
    with open(path, "wb") as f:
        for _ in range(inputs):
            data = b"".join(_raw_packet(rnd, topics) for _ in range(rnd.randrange(1, 4)))
            f.write(struct.pack("<I", len(data)) + data)
    cfg = os.path.join(root, "raw.json")
    with open(cfg, "w") as f:
        json.dump({"dev": DEV, "key": dkey.private_numbers().private_value.to_bytes(32, "big").hex(),
                   "fleet": fleetkeys.public_point(fleet).hex(), "inputs": path}, f)
    r = run_mp(RAW, devdir, heap_kib=512, timeout=1800, args=(cfg,),
               path=device_path(devdir) + ":" + os.path.join(ROOT, "app"))
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    res = json.loads(line[-1][7:]) if line else {"inputs": 0, "crashes": 0, "drops": 0, "events": []}
    res["rc"] = r.returncode
    res["out"] = (r.stdout + r.stderr)[-1500:]
    seen = set()
    res["excess"] = []
    for k in map(tuple, res["events"]):
        if k in seen:
            res["excess"].append("/".join(k))
        seen.add(k)
    return res


def failures(res):
    """Broken properties, counted."""
    return (res["crashes"] + res["unanswered"] + len(res["excess"]) + len(res["alarms"])
            + (1 if res["readings_short"] else 0) + (1 if res["mqtt_events"] > 2 * res["oversized"] + 1 else 0))


def raw_failures(raw):
    return raw["crashes"] + len(raw["excess"]) + (1 if raw["rc"] else 0)


def run(fig, args):
    with tempfile.TemporaryDirectory(prefix="soak-agent-") as tmp:
        res = campaign(os.path.join(tmp, "broker"), args.agent_fuzz, args.agent_batch, args.agent_seed)
        raw = raw_inputs(os.path.join(tmp, "raw"), args.agent_raw, args.agent_seed)
    if raw_failures(raw):
        print("  agent raw fuzz:", raw["out"])
    for a in res["alarms"][:10]:
        print("  agent fuzz alarm:", a)
    for e in res["excess"][:10]:
        print("  agent fuzz: event over one per reason per window:", e)
    fig.add("agent_fuzz_messages", res["messages"], "messages",
            "random and mutated PUBLISHes through mosquitto to one agent (virtual board, 64 KiB app heap), seed %d: "
            "%d on cmd, %d on update (%d over max_packet, each a reconnect), QoS 0 and 1, a genuine 'read' every %d "
            "(%d sent) in %.0f s; %d readings received; %d events, rejection reasons: %s" % (
                args.agent_seed, res["by_topic"]["cmd"], res["by_topic"]["update"], res["oversized"],
                args.agent_batch, res["markers"], res["seconds"], res["readings"], res["events"],
                " ".join(res["reasons"])))
    fig.add("agent_fuzz_crashes", res["crashes"], "count",
            "resets %d, agent/crash events %d, tracebacks on the console %d, boot state changed (trial attempt) %s" % (
                res["resets"], res["crash_events"], res["tracebacks"], res["boot_changed"]))
    fig.add("agent_fuzz_violations", failures(res) - res["crashes"], "count",
            "'read' commands never answered %d, events over one per reason per window %d, console alarms %d, "
            "readings stopped %s, mqtt events %d for %d oversized" % (
                res["unanswered"], len(res["excess"]), len(res["alarms"]), res["readings_short"],
                res["mqtt_events"], res["oversized"]))
    fig.add("agent_fuzz_raw_inputs", raw["inputs"], "inputs",
            "malformed MQTT inputs (1-3 packets: topics not UTF-8 or too long, bad lengths, truncated, random flags "
            "and bodies on the agent's topics) fed in-process to the real Agent's client, seed %d; %d ended the "
            "connection with an MQTTError; events recorded: %s" % (
                args.agent_seed, raw["drops"], " ".join("/".join(e) for e in raw["events"])))
    fig.add("agent_fuzz_raw_failures", raw_failures(raw), "count",
            "anything but MQTTError out of the client or the agent's callback: %d; a second event for one reason: "
            "%d; process exit status %d" % (raw["crashes"], len(raw["excess"]), raw["rc"]))
    return failures(res) + raw_failures(raw)
