"""Host side of the delta tests: run the device's detools applier on a
simulated device over patches the real detools package made.

apply_jobs() starts one unix-port process on a fresh simulated device that
runs a list of jobs; each job writes a base image into one partition, feeds
a patch file to ironclad.detools.Patch (in pieces of `feed` bytes, optionally
stopping at every checkpoint and carrying on from its saved state in a new
Patch object), and prints the SHA-256 of the result read back from the other
partition, or the PatchError."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import mphelp  # noqa: E402
from ictl import device as sim_device  # noqa: E402

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


def apply_jobs(tmp, jobs, heap_kib=96, timeout=300):
    """Runs the jobs on a fresh device; returns one (status, value, resumes)
    per job: ("OK", sha256 hex, resumes) or ("ERR", message, None)."""
    dev = os.path.join(str(tmp), "dev")
    sim_device.create(dev, force=True)
    spec = os.path.join(str(tmp), "jobs.json")
    with open(spec, "w") as f:
        json.dump(jobs, f)
    r = mphelp.run_mp(DEVICE_JOBS, devdir=dev, heap_kib=heap_kib, timeout=timeout, args=(spec,))
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
