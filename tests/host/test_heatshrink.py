"""The device's heatshrink decoder (ironclad.heatshrink) against streams the
heatshrink2 package (the reference C encoder) makes: every window/lookahead
detools accepts, data from compressible to random, input and output in
pieces of every size from 1 byte, the decoder's state carried into a new
decoder between pieces (as across a reboot), and the end check."""
import hashlib
import json
import os
import random

from heatshrink2.core import Encoder, Writer

from ictl.sim import device as sim_device
from ictl.sim.updatelab import run_mp

DEVICE = r"""
out = bytearray(50000)
inp = bytearray(30000)
import sys, json, random, hashlib, binascii, gc
from ironclad import heatshrink

for job in json.load(open(sys.argv[1])):
    gc.collect()
    with open(job["file"], "rb") as f:
        data = memoryview(inp)[:f.readinto(inp)]
    w, l = job["w"], job["l"]
    random.seed(job["seed"])
    d = heatshrink.Decoder(w, l)
    sp = dp = 0
    while True:
        ie = min(len(data), sp + random.choice(job["isteps"]))
        oe = min(len(out), dp + random.choice(job["osteps"]))
        sp2, dp2 = d.decode(data, sp, ie, out, dp, oe)
        if job["restore"]:
            st = d.state()
            d = heatshrink.Decoder(w, l)
            d.restore(st)
        if sp2 == sp and dp2 == dp and sp == len(data) and not d.pending():
            break
        sp, dp = sp2, dp2
    ok = binascii.hexlify(hashlib.sha256(memoryview(out)[:dp]).digest()).decode() == job["sha"]
    print("OUT", job["name"], dp, ok, d.finished())
"""


def test_decoder_matches_reference_encoder(tmp_path):
    rng = random.Random(3)
    texts = {
        "zeros": bytes(6000),
        "text": b"".join(b"%d: the quick brown fox %d\n" % (i, i * 7) for i in range(250)),
        "random": rng.randbytes(1500),
        "mixed": rng.randbytes(300) + bytes(500) + b"abc" * 200 + rng.randbytes(100),
        "one": b"x",
    }
    jobs = []
    for (w, l) in ((8, 7), (4, 3), (5, 4), (10, 5), (12, 11), (9, 8)):
        for name, data in texts.items():
            e = Encoder(Writer(window_sz2=w, lookahead_sz2=l))
            comp = e.fill(data) + e.finish()
            base = os.path.join(str(tmp_path), "%s-%d-%d" % (name, w, l))
            open(base + ".hs", "wb").write(comp)
            modes = [([len(comp) + 1], [50000], False), ([1, 2, 3, 7], [1, 5, 130], False),
                     ([64, 4096], [300, 4096], True)]
            if name in ("mixed", "one") and w <= 8:
                # Byte by byte both ways, the state carried into a new decoder
                # at every step: slow, so on the small inputs only.
                modes.append(([1], [1], True))
            for k, (isteps, osteps, restore) in enumerate(modes):
                jobs.append({"name": "%s-%d-%d-%d" % (name, w, l, k), "file": base + ".hs",
                             "sha": hashlib.sha256(data).hexdigest(),
                             "w": w, "l": l, "seed": k, "isteps": isteps, "osteps": osteps, "restore": restore})
    spec = os.path.join(str(tmp_path), "jobs.json")
    json.dump(jobs, open(spec, "w"))
    dev = os.path.join(str(tmp_path), "dev")
    sim_device.create(dev)
    r = run_mp(DEVICE, dev, heap_kib=256, args=(spec,), timeout=300)
    lines = [l.split() for l in r.stdout.splitlines() if l.startswith("OUT ")]
    assert r.returncode == 0 and len(lines) == len(jobs), r.stdout + r.stderr
    for ln, job in zip(lines, jobs):
        assert ln[1] == job["name"] and ln[3] == "True" and ln[4] == "True", (ln, job)


def test_bad_parameters_and_state(tmp_path):
    dev = os.path.join(str(tmp_path), "dev")
    sim_device.create(dev)
    code = r"""
from ironclad import heatshrink
for w, l in ((3, 3), (13, 4), (8, 8), (8, 2)):
    try:
        heatshrink.Decoder(w, l)
        print("ACCEPTED", w, l)
    except heatshrink.HeatshrinkError:
        print("REFUSED", w, l)
d = heatshrink.Decoder(8, 7)
st = bytearray(d.state())
st[21] = 0x10  # head index (bytes 20..23) far outside the window
for bad in (bytes(st), d.state()[:-1]):
    try:
        heatshrink.Decoder(8, 7).restore(bad)
        print("ACCEPTED state")
    except heatshrink.HeatshrinkError:
        print("REFUSED state")
# A literal tag with its byte missing, and stray one-bits, are not a clean end.
for stream in (b"\x80", b"\x01"):
    d = heatshrink.Decoder(8, 7)
    o = bytearray(10)
    d.decode(stream, 0, len(stream), o, 0, 10)
    print("END", d.finished())
"""
    r = run_mp(code, dev, heap_kib=128)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:6] == ["REFUSED 3 3", "REFUSED 13 4", "REFUSED 8 8", "REFUSED 8 2",
                                        "REFUSED state", "REFUSED state"], r.stdout
    assert r.stdout.count("END False") == 2
