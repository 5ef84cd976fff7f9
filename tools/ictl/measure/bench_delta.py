"""Delta update figures: patch size for a one-module change in a >= 200 KiB
app image and for a firmware-sized pair, apply time against a slot-to-slot
copy through the same flash stand-in, the applier's peak heap for 256 KiB
and 1 MiB images, and MQTT bytes of a delta update against a full one."""
import glob
import os
import random
import shutil
import subprocess

from ictl import ROOT
from ictl.sim import device as sim_device
from ictl.sim import factory
from ictl import image as app_image
from ictl.sim import updatelab
from ictl.update import Update, make_patch

SLOT_APP = ("app_a", "app_b")
SLOT_FW = ("ota_0", "ota_1")

# Real modules for a large app, in a fixed order: the device package's
# plain-Python modules, then pure-Python packages from the venv, as many as
# mpy-cross compiles, until the image passes 200 KiB.
_SOURCES = ["lib/ironclad/ironclad", "paho/mqtt", "mpremote", "cbor2", "serial", "esptool", "esptool/targets",
            "humanfriendly", "detools", "pycose"]
_APP_MIN = 215 * 1024


def _site():
    import paho

    return os.path.dirname(os.path.dirname(os.path.abspath(paho.__file__)))


def app_tree(dst, change=None):
    """An app source folder of real modules (>= 200 KiB compiled). change:
    the name of one module to alter (a function added), for v2."""
    os.makedirs(dst)
    with open(os.path.join(dst, "main.py"), "w") as f:
        f.write("import agent\nagent.main()\n")
    shutil.copy(os.path.join(ROOT, "app", "agent.py"), os.path.join(dst, "agent.py"))
    total = 0
    names = []
    for s in _SOURCES:
        d = os.path.join(ROOT, s) if s.startswith("lib/") else os.path.join(_site(), s)
        for p in sorted(glob.glob(os.path.join(d, "*.py"))):
            out = os.path.join(dst, "%s_%s" % (s.replace("/", "_"), os.path.basename(p)))
            r = subprocess.run([updatelab.MPY_CROSS, "-o", out[:-3] + ".mpy", p], capture_output=True)
            if r.returncode:
                continue  # CPython-only syntax, or native code
            total += os.path.getsize(out[:-3] + ".mpy")
            os.unlink(out[:-3] + ".mpy")
            shutil.copy(p, out)
            names.append(os.path.basename(out))
            if total >= _APP_MIN:
                break
        if total >= _APP_MIN:
            break
    if change:
        name = names[len(names) // 2] if change is True else change
        with open(os.path.join(dst, name), "a") as f:
            f.write("\n\ndef _v2_added(x):\n    return (x * 3 + 1) & 0xFFFF\n")
        return dst, name
    return dst, None


def fw_pair():
    """A pair of real firmware-sized (>= 1 MiB) binaries: IC_FW_PAIR=old:new,
    else two releases of one CPython extension module found on this host
    (unicodedata, 3.11 -> 3.12), else None."""
    env = os.getenv("IC_FW_PAIR")
    if env:
        a, b = env.split(":", 1)
        return a, b
    roots = glob.glob(os.path.expanduser("~/.pyenv/versions/3.11.*")) + glob.glob("/usr/lib/python3.11")
    news = glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*")) + glob.glob("/usr/lib/python3.12")
    for r in sorted(roots):
        a = glob.glob(os.path.join(r, "lib", "python3.11", "lib-dynload", "unicodedata*.so")) + \
            glob.glob(os.path.join(r, "lib-dynload", "unicodedata*.so"))
        for n in sorted(news):
            b = glob.glob(os.path.join(n, "lib", "python3.12", "lib-dynload", "unicodedata*.so")) + \
                glob.glob(os.path.join(n, "lib-dynload", "unicodedata*.so"))
            if a and b and os.path.getsize(a[0]) >= 1 << 20 and os.path.getsize(b[0]) >= 1 << 20:
                return a[0], b[0]
    return None


def _write_partition(devdir, label, data):
    p = [q for q in sim_device.load(devdir)["partitions"] if q["label"] == label][0]
    if len(data) > p["size"]:
        raise ValueError("%d bytes do not fit %s" % (len(data), label))
    with open(os.path.join(devdir, "flash.bin"), "r+b") as f:
        f.seek(p["offset"])
        f.write(b"\xff" * p["size"])  # erased
    sim_device.write_flash(devdir, p["offset"], data)  # encrypted under flash encryption, as esptool --encrypt


TIMING = """
sec = bytearray(4096)
cache = bytearray(1024)
buf = bytearray(4096)
import time, esp32
from ironclad import detools
P = esp32.Partition
src = (P.find(P.TYPE_DATA, label=SRC) or P.find(P.TYPE_APP, label=SRC))[0]
dst = (P.find(P.TYPE_DATA, label=DST) or P.find(P.TYPE_APP, label=DST))[0]
patch = open(PATCH, "rb").read()  # in RAM, as each chunk is once decrypted
mv = memoryview(patch)
nsec = (RESULT + 4095) // 4096
best_a = best_c = None
for r in range(5):
    t = time.ticks_us()
    p = detools.Patch(src, BASE, dst, RESULT, len(patch), sector=sec, cache=cache)
    for o in range(0, len(patch), 4096):
        p.feed(mv[o:o + 4096])
    ta = time.ticks_diff(time.ticks_us(), t)
    if not p.done():
        raise SystemExit("apply not done")
    t = time.ticks_us()
    for i in range(nsec):
        src.readblocks(i, buf)
        dst.writeblocks(i, buf)
    tc = time.ticks_diff(time.ticks_us(), t)
    best_a = ta if best_a is None else min(best_a, ta)
    best_c = tc if best_c is None else min(best_c, tc)
print("TIMES", best_a, best_c)
"""

# The applier's heap: live bytes after a collection at every sector boundary
# (the most the applier ever holds: between boundaries it allocates only
# small views), over the modules, partitions and the 4 KiB chunk buffer
# already there; and, with the GC off, what it allocates per sector.
PEAK = """
chunk = bytearray(4096)
import gc, esp32
from ironclad import detools
P = esp32.Partition
src = (P.find(P.TYPE_DATA, label=SRC) or P.find(P.TYPE_APP, label=SRC))[0]
dst = (P.find(P.TYPE_DATA, label=DST) or P.find(P.TYPE_APP, label=DST))[0]
peak = [0]


def apply(on_sector):
    p = detools.Patch(src, BASE, dst, RESULT, PLEN, on_sector=on_sector)
    with open(PATCH, "rb") as f:
        while True:
            n = f.readinto(chunk)
            if not n:
                break
            p.feed(memoryview(chunk)[:n])
    if not p.done():
        raise SystemExit("apply not done")
    return p


def sample(p):
    gc.collect()
    peak[0] = max(peak[0], gc.mem_alloc() - base)


gc.collect()
base = gc.mem_alloc()
p = apply(sample)
sample(p)
p = None
churn = [0]


def count(p):
    # Bytes allocated (garbage included) over the first 8 sectors.
    if p.to_pos == 8 * 4096:
        churn[0] = gc.mem_alloc() - base
        gc.enable()


gc.collect()
base = gc.mem_alloc()
gc.disable()
apply(count)
gc.enable()
print("PEAK", peak[0], churn[0] // 8)
"""


def _script(tpl, **kw):
    for k, v in kw.items():
        tpl = tpl.replace(k, repr(v))
    return tpl


def _peak(devdir, tmp, name, base, new, slots):
    _write_partition(devdir, slots[0], base)
    pf = os.path.join(tmp, name + ".patch")
    with open(pf, "wb") as f:
        f.write(make_patch(base, new))
    code = _script(PEAK, SRC=slots[0], DST=slots[1], PATCH=pf, BASE=len(base), RESULT=len(new),
                   PLEN=os.path.getsize(pf))
    r = updatelab.run_mp(code, devdir, heap_kib=256, timeout=300)
    line = [l for l in r.stdout.splitlines() if l.startswith("PEAK")]
    if not line:
        raise RuntimeError("peak run failed: %s" % (r.stdout + r.stderr)[-500:])
    peak, churn = map(int, line[0].split()[1:])
    return peak, churn


def _mqtt_bytes(upd, meta, prefix="ironclad", dev="dev1"):
    # PUBLISH packets at QoS 1: fixed header (1 + remaining-length bytes),
    # topic (2 + len), packet id (2), payload.
    topic = len("%s/%s/update" % (prefix, dev))

    def pkt(n):
        rem = 2 + topic + 2 + n
        return 1 + (1 if rem < 128 else 2 if rem < 16384 else 3) + rem
    return pkt(len(meta)) + sum(pkt(len(upd.chunk(i))) for i in range(upd.n))


def run(fig, tmp, args):
    work = os.path.join(tmp, "delta")
    os.makedirs(work)
    # -- app: a one-module change in a >= 200 KiB image -----------------------
    key_path = os.path.join(work, "sign.pem")
    key = app_image.keygen(key_path)
    kid = app_image.key_id_for(key.public_key())
    src1, _ = app_tree(os.path.join(work, "v1"))
    src2, changed = app_tree(os.path.join(work, "v2"), change=True)
    v1 = app_image.build(src1, key, kid, "1.0.0", 1, "esp32-sim")
    v2 = app_image.build(src2, key, kid, "1.0.1", 1, "esp32-sim")
    patch = make_patch(v1, v2)
    fig.add("delta_ratio_app", round(len(patch) / len(v2), 4), "ratio",
            "detools sequential/bsdiff heatshrink(8,7) patch %d B / signed app image %d B (ROMFS of %d real modules "
            "compiled to .mpy; %s changed by one added function; version, hash and signature change too)"
            % (len(patch), len(v2), len(os.listdir(src1)), changed))
    # -- firmware-sized pair -----------------------------------------------------
    pair = fw_pair()
    if pair:
        a, b = (open(p, "rb").read() for p in pair)
        fp = make_patch(a, b)
        fig.add("delta_ratio_fw", round(len(fp) / len(b), 4), "ratio",
                "patch %d B / new %d B for %s -> %s (real binaries of two releases; no MicroPython ESP32 firmware "
                "builds are available offline)" % (len(fp), len(b), pair[0], pair[1]))
    else:
        fig.add("delta_ratio_fw", None, "ratio", "no firmware-sized pair on this host: set IC_FW_PAIR=old.bin:new.bin")
    # -- apply time against a slot-to-slot copy ------------------------------
    dev = os.path.join(work, "dev")
    sim_device.create(dev)
    _write_partition(dev, "app_a", v1)
    pf = os.path.join(work, "app.patch")
    with open(pf, "wb") as f:
        f.write(patch)
    r = updatelab.run_mp(_script(TIMING, SRC="app_a", DST="app_b", PATCH=pf, BASE=len(v1), RESULT=len(v2)), dev,
                         heap_kib=256, timeout=300)
    line = [l for l in r.stdout.splitlines() if l.startswith("TIMES")]
    if not line:
        raise RuntimeError("timing run failed: %s" % (r.stdout + r.stderr)[-500:])
    ta, tc = map(int, line[0].split()[1:])
    fig.add("delta_apply_ratio", round(ta / tc, 2), "ratio",
            "apply the app delta slot to slot (%d KiB result) / copy the same sectors app_a -> app_b through the "
            "flash stand-in (read + erase + NOR write), unix port, best of 5: %d us vs %d us"
            % (len(v2) // 1024, ta, tc))
    # -- peak heap, 256 KiB and 1 MiB ----------------------------------------------
    rng = random.Random(7)
    peaks = []
    for name, size, slots in (("256k", 256 * 1024, SLOT_APP), ("1m", 1 << 20, SLOT_FW)):
        base = rng.randbytes(size)
        new = bytearray(base)
        for _ in range(40):
            i = rng.randrange(size - 64)
            new[i:i + 32] = rng.randbytes(32)
        i = rng.randrange(size // 2)
        new[i:i] = rng.randbytes(5000)
        new = bytes(new[:size])
        peaks.append((name,) + _peak(dev, work, name, base, new, slots))
    worst = max(p[1] for p in peaks)
    fig.add("delta_apply_peak_heap_kib", round(worst / 1024, 2), "KiB",
            "the applier's live heap at its largest (sector buffer, base cache, heatshrink window, state; sampled "
            "after a collection at every sector), worst of: %s; short-lived allocations per 4 KiB sector (GC off): "
            "%s" % ("; ".join("%s image %.2f KiB" % (p[0], p[1] / 1024) for p in peaks),
                    "; ".join("%s %d B" % (p[0], p[2]) for p in peaks)))
    # -- the whole updater's heap during a delta and a full update ---------------
    lab = os.path.join(work, "lab")
    os.makedirs(lab)
    shutil.copy(key_path, os.path.join(lab, "sign.pem"))
    f = updatelab.Fleet(lab, "dev1")
    heaps = []
    for kind, base_img in (("delta", v1), ("full", None)):
        factory.flash_image(f.devdir, v1, "app_a")
        shutil.rmtree(os.path.join(f.devdir, "board"), ignore_errors=True)
        # The benchmark measures the updater on a large image, not the boot
        # path: this board's map limit takes the whole image (a board with
        # the default limit refuses it: docs/verified-boot.md, "The map limit").
        factory.trust_device(f.devdir, [(kid, key.public_key())], map_max=len(v2))
        u = Update.create(v2, base=base_img)
        meta = f.save(u, u.metadata(f.dev_id, f.dev_pub, key, kid), kind)
        # A heap the unix boot can map the 227 KB image into (a stock ESP32
        # firmware copies it too); the mapping is dropped before the updater runs.
        rc, lines, reps = f.run(send=[meta], updates=[u], heap=True, heap_kib=640)
        hl = [int(l.split()[1]) for l in lines if l.startswith("HEAP ")]
        if rc != -9 or not hl or reps[-1]["state"] != "applied":
            raise RuntimeError("updater heap run failed: %s" % (f.last.stdout + f.last.stderr)[-500:])
        heaps.append((kind, max(hl)))
    fig.add("update_peak_heap_kib", round(max(h for _, h in heaps) / 1024, 2), "KiB",
            "the updater's live heap at its largest during a %d KiB app update (metadata, content key, AES-CCM "
            "work buffers, decrypted chunk, applier), after a collection after each message; %s"
            % (len(v2) // 1024, "; ".join("%s %.2f KiB" % (k, h / 1024) for k, h in heaps)))
    # -- MQTT bytes, delta against full ---------------------------------------
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives import serialization

    dk = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    d = Update.create(v2, base=v1)
    full = Update.create(v2)
    bd = _mqtt_bytes(d, d.metadata("dev1", dk, key, kid))
    bf = _mqtt_bytes(full, full.metadata("dev1", dk, key, kid))
    fig.add("update_bytes_ratio", round(bd / bf, 4), "ratio",
            "MQTT PUBLISH bytes (header, topic, packet id, payload) of metadata + encrypted chunks: delta %d B (%d "
            "chunk) / full %d B (%d chunks, heatshrink-compressed image)" % (bd, d.n, bf, full.n))
