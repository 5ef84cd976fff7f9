"""The device's detools applier (ironclad.detools) against patches made by the
real detools package and its command-line tool: byte-exact results for
varied pairs and all three compressions, resume from every checkpoint, and
hostile patches rejected with PatchError (never another exception, never a
write past the declared size)."""
import glob
import hashlib
import io
import os
import random
import subprocess
import sys

import detools
from heatshrink2.core import Encoder, Writer

from ictl import ROOT
from ictl.sim.updatelab import apply_jobs

VENV_BIN = os.path.dirname(sys.executable)
DETOOLS_CLI = os.path.join(VENV_BIN, "detools")
MPREMOTE = os.path.join(VENV_BIN, "mpremote")
MP_SO = glob.glob(os.path.join(os.path.dirname(detools.__file__), "..", "micropython_run*.so"))


def sha(b):
    return hashlib.sha256(b).hexdigest()


def make_patch(a, b, **kw):
    f = io.BytesIO()
    detools.create_patch(io.BytesIO(a), io.BytesIO(b), f, **kw)
    return f.getvalue()


def cli_patch(tmp, a, b, name, *opts):
    fa, fb, fp = (os.path.join(str(tmp), name + s) for s in (".from", ".to", ".patch"))
    open(fa, "wb").write(a)
    open(fb, "wb").write(b)
    subprocess.run([DETOOLS_CLI, "create_patch", *opts, fa, fb, fp], check=True, capture_output=True)
    return open(fp, "rb").read()


def job(tmp, name, a, patch, result_len, src="app_a", dst="app_b", **kw):
    base = os.path.join(str(tmp), name + ".base")
    pf = os.path.join(str(tmp), name + ".p")
    open(base, "wb").write(a)
    open(pf, "wb").write(patch)
    return dict(base=base, patch=pf, result_len=result_len, src=src, dst=dst, **kw)


def edited(a, rng, n_edits=6):
    """A plausible next version of a: some bytes changed, a block inserted, one removed."""
    b = bytearray(a)
    for _ in range(n_edits):
        i = rng.randrange(len(b) - 64)
        b[i:i + 16] = rng.randbytes(16)
    i = rng.randrange(len(b))
    b[i:i] = rng.randbytes(3000)
    i = rng.randrange(len(b) - 5000)
    del b[i:i + 2000]
    return bytes(b)


def romfs(tmp, name, files):
    d = os.path.join(str(tmp), name)
    os.makedirs(d)
    for fn, text in files.items():
        with open(os.path.join(d, fn), "w") as f:
            f.write(text)
    out = d + ".img"
    subprocess.run([MPREMOTE, "romfs", "-o", out, "build", d], check=True, capture_output=True)
    return open(out, "rb").read()


def app_sources():
    """Real MicroPython modules without viper (what `mpremote romfs build` compiles)."""
    files = {}
    for p in sorted(glob.glob(os.path.join(ROOT, "lib", "ironclad", "ironclad", "*.py"))):
        text = open(p).read()
        if "viper" not in text and "native" not in text:
            files[os.path.basename(p)] = text
    return files


def test_byte_exact_pairs(tmp_path):
    rng = random.Random(6)
    jobs, want = [], []

    def add(name, a, b, **kw):
        p = make_patch(a, b, **kw)
        jobs.append(job(tmp_path, name, a, p, len(b)))
        want.append((name, sha(b)))

    a = rng.randbytes(150_000)
    b = edited(a, rng)
    for comp in ("heatshrink", "crle", "none"):
        add("random-" + comp, a, b, compression=comp)
    add("hs-10-5", a, b, compression="heatshrink", heatshrink_window_sz2=10, heatshrink_lookahead_sz2=5)
    add("hs-4-3", a, b, compression="heatshrink", heatshrink_window_sz2=4, heatshrink_lookahead_sz2=3)
    add("empty-to-something", b"", b, compression="heatshrink")
    add("something-to-empty", a, b"", compression="heatshrink")
    add("identical", a, a, compression="heatshrink")
    add("identical-crle", a, a, compression="crle")
    add("empty-to-empty", b"", b"", compression="none")
    text = b"".join(b"line %d of a log file\n" % i for i in range(4000))
    add("text", text, text.replace(b"of a", b"in the"), compression="heatshrink")
    add("tiny", b"x", b"y", compression="heatshrink")
    results = apply_jobs(tmp_path, jobs)
    for (name, h), r in zip(want, results):
        assert r[:2] == ("OK", h), (name, r)


def test_cli_patches_romfs_and_firmware_sized(tmp_path):
    rng = random.Random(7)
    jobs, want = [], []
    # Two ROMFS app images (mpremote romfs build) differing in one module.
    src = app_sources()
    v1 = romfs(tmp_path, "app1", src)
    changed = dict(src)
    name = sorted(changed)[len(changed) // 2]
    changed[name] = changed[name] + "\n\ndef added_in_v2(x):\n    return x * 2 + 1\n"
    v2 = romfs(tmp_path, "app2", changed)
    assert v1 != v2 and len(v1) > 20_000
    for comp in ("heatshrink", "crle", "none"):
        p = cli_patch(tmp_path, v1, v2, "romfs-" + comp, "-c", comp)
        jobs.append(job(tmp_path, "romfs-" + comp, v1, p, len(v2)))
        want.append(("romfs-" + comp, sha(v2)))
    # Firmware-sized (>= 1 MiB), OTA slot to OTA slot: real machine code, the
    # MicroPython unix port's own binary; the "new" version moves, drops and
    # inserts blocks of it (a release's link map shifts the same way).
    assert MP_SO, "micropython_run*.so not found next to detools"
    so = open(MP_SO[0], "rb").read()
    fw1 = so[:1_300_000]
    fw2 = so[:400_000] + rng.randbytes(20_000) + so[430_000:900_000] + so[1_000_000:1_400_000]
    assert len(fw1) >= 1 << 20 and len(fw2) >= 1 << 20
    p = cli_patch(tmp_path, fw1, fw2, "fw", "-c", "heatshrink")
    jobs.append(job(tmp_path, "fw", fw1, p, len(fw2), src="ota_0", dst="ota_1"))
    want.append(("fw", sha(fw2)))
    # Two real releases of one binary (the bench's firmware-sized pair), when
    # this host has them.
    from ictl.measure.bench_delta import fw_pair

    pair = fw_pair()
    if pair:
        r1, r2 = (open(x, "rb").read() for x in pair)
        p = make_patch(r1, r2, compression="heatshrink")
        jobs.append(job(tmp_path, "fw-real", r1, p, len(r2), src="ota_0", dst="ota_1"))
        want.append(("fw-real", sha(r2)))
    results = apply_jobs(tmp_path, jobs)
    for (n, h), r in zip(want, results):
        assert r[:2] == ("OK", h), (n, r)


def test_feed_sizes_and_resume_from_every_checkpoint(tmp_path):
    rng = random.Random(8)
    a = rng.randbytes(60_000)
    b = edited(a, rng)
    jobs, want = [], []
    for comp in ("heatshrink", "crle", "none"):
        p = make_patch(a, b, compression=comp)
        for feed in (1, 7, 4096):
            jobs.append(job(tmp_path, "%s-%d" % (comp, feed), a, p, len(b), feed=feed))
            want.append((comp, feed, False))
        jobs.append(job(tmp_path, comp + "-resume", a, p, len(b), feed=1000, resume=True))
        want.append((comp, 1000, True))
    results = apply_jobs(tmp_path, jobs)
    sectors = (len(b) + 4095) // 4096
    for w, r in zip(want, results):
        assert r[:2] == ("OK", sha(b)), (w, r)
        # Stopped after every full sector but the last, and carried on each time.
        assert r[2] == (sectors - 1 if w[2] else 0), (w, r)


# -- hostile patches ------------------------------------------------------------


def varint(v):
    from detools.bsdiff import pack_size
    return bytes(pack_size(v))


def hs(data, w=8, l=7):
    e = Encoder(Writer(window_sz2=w, lookahead_sz2=l))
    return bytes([(w - 4) << 4 | (l - 3)]) + e.fill(data) + e.finish()


def raw_patch(to_size, body, comp=4):
    # header: sequential (0), compression; then to_size; then the body.
    return bytes([comp]) + varint(to_size) + (hs(body) if comp == 4 else body)


def test_hostile_patches_rejected(tmp_path):
    rng = random.Random(9)
    a = rng.randbytes(20_000)
    b = edited(a, rng)
    good = make_patch(a, b, compression="heatshrink")
    cases = []

    def case(name, base, patch, result_len, expect, **kw):
        cases.append((name, expect, job(tmp_path, name, base, patch, result_len, **kw)))

    case("truncated", a, good[:-3], len(b), "truncated or corrupt")
    case("truncated-declared-full", a, good[:-3], len(b), "not done", patch_len=len(good))
    case("longer-than-declared", a, good + b"\0", len(b), "longer than declared", patch_len=len(good))
    case("trailing-data", a, good + b"\0\0\0", len(b), "")
    case("declared-size-differs", a, good, len(b) - 1, "declared")
    case("lzma", a, make_patch(a, b, compression="lzma"), len(b), "compression 1 not supported")
    case("in-place", a, make_patch(a, b, patch_type="in-place", memory_size=65536, segment_size=4096,
                                   compression="none"), len(b), "not a sequential patch")
    # A 4 KiB result whose single extra segment claims a gigabyte: the bomb
    # expands from a few bytes, and is refused before one byte is written.
    case("bomb-extra", a, raw_patch(4096, varint(0) + varint(0) + varint(1 << 30) + bytes(4096)), 4096,
         "writes past the declared size")
    # A stream that decompresses to far more than it declares: 4 KiB of zeros
    # then a megabyte more; the applier stops at the end and calls it trailing.
    case("bomb-trailing", a, raw_patch(4096, varint(0) + varint(0) + varint(4096) + bytes(4096) + varint(0)
                                       + bytes(1 << 20)), 4096, "")
    case("no-progress", a, raw_patch(16, varint(0) + (varint(0) + varint(0) + varint(0)) * 5000
                                     + varint(0) + varint(16) + bytes(16) + varint(0)), 16, "no progress")
    case("reads-past-base", a, raw_patch(4096, varint(0) + varint(4096) + bytes(4096) + varint(0) + varint(0)),
         4096, "outside the base", base_len=100)
    case("negative-from", a, raw_patch(8192, varint(0) + varint(0) + varint(0) + varint(-5000)
                                       + varint(4096) + bytes(4096) + varint(4096) + bytes(4096) + varint(0)),
         8192, "outside the base")
    case("data-format", a, raw_patch(16, varint(3) + varint(0) + b"abc"), 16, "data-format")
    case("huge-varint", a, raw_patch(16, varint(0) + b"\xff" * 12), 16, "size field too long")
    case("crle-bad-kind", a, raw_patch(16, bytes([5, 1, 0]), comp=2), 16, "crle")
    case("not-sequential", a, bytes([0x20]) + good[1:], len(b), "not a sequential patch")
    case("hs-window-too-big", a, bytes([4]) + varint(16) + bytes([0xF4]) + bytes(10), 16, "not supported")
    jobs = [c[2] for c in cases]
    results = apply_jobs(tmp_path, jobs)
    for (name, expect, _), r in zip(cases, results):
        assert r[0] == "ERR", (name, r)
        assert expect in r[1], (name, r)


def test_corrupt_patches_never_crash(tmp_path):
    """Random byte flips in real patches: the applier either reports a
    PatchError or produces a result whose hash differs (which the updater's
    signed result hash then rejects); it never raises anything else, never
    hangs."""
    rng = random.Random(10)
    a = rng.randbytes(30_000)
    b = edited(a, rng)
    jobs = []
    for comp in ("heatshrink", "crle", "none"):
        good = bytearray(make_patch(a, b, compression=comp))
        for i in range(25):
            bad = bytearray(good)
            for _ in range(rng.choice((1, 1, 3))):
                bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            jobs.append(job(tmp_path, "%s-%d" % (comp, i), a, bytes(bad), len(b)))
    results = apply_jobs(tmp_path, jobs)
    # apply_jobs fails on any exception but PatchError; a flip in the data
    # bytes gives a different result, one in the structure an error.
    errs = sum(1 for r in results if r[0] == "ERR")
    same = sum(1 for r in results if r[0] == "OK" and r[1] == sha(b))
    assert errs >= 3 and same <= 3, (errs, same)
