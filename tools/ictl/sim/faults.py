"""Power-cut campaigns on simulated devices: run a device script once to count
its flash operations, then again with power cut before each operation (and
each operation torn), and check the device's state after every cut."""
import os
import shutil
import subprocess
import tempfile

from ictl import ROOT
from ictl.sim import device as sim_device
from ictl.sim import wifisim
from ictl.sim import MICROPYTHON  # IRONCLAD_MICROPYTHON picks another build

MICROPYPATH = ":".join([".frozen"] + [os.path.join(ROOT, p) for p in ("lib/ironclad", "firmware/unix")])


def run_device(code, devdir, fault=None, heap_kib=112, env=None, timeout=120):
    e = dict(os.environ, MICROPYPATH=MICROPYPATH, ESPSIM_DIR=str(devdir), **dict(wifisim.LAB_NET, **(env or {})))
    e.pop("ESPSIM_FAULT", None)
    if fault:
        e["ESPSIM_FAULT"] = fault
    return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, "-c", code],
                          env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def count_ops(code, devdir, heap_kib=112):
    trace = os.path.join(str(devdir), "ops.trace")
    r = run_device(code, devdir, env={"ESPSIM_TRACE": trace}, heap_kib=heap_kib)
    if r.returncode:
        raise RuntimeError("scenario failed without faults: %s" % (r.stdout + r.stderr))
    with open(trace) as f:
        n = sum(1 for _ in f)
    os.unlink(trace)
    return n


def sweep(setup, code, check, tear_bytes=(5,), points=None, workdir=None, heap_kib=112):
    """Cut before every operation of `code` (and tear each after tear_bytes)
    on a device prepared by `setup`; `check` runs after each cut and must
    print OK. Returns (cut_points, failures: list of (fault, output))."""
    tmp = workdir or tempfile.mkdtemp(prefix="ictl-sweep-")
    base = os.path.join(tmp, "base")
    sim_device.create(base, force=True, flash_encryption=True)  # a production board
    if setup:
        r = run_device(setup, base, heap_kib=heap_kib)
        if r.returncode:
            raise RuntimeError("setup failed: %s" % (r.stdout + r.stderr))
    flash0 = open(os.path.join(base, "flash.bin"), "rb").read()
    ref = os.path.join(tmp, "ref")
    shutil.copytree(base, ref, dirs_exist_ok=True)
    total = count_ops(code, ref, heap_kib)
    todo = range(1, total + 1) if points is None else [p for p in points if 1 <= p <= total]
    failures = []
    n = 0
    for op in todo:
        for fault in ["cut:%d" % op] + ["tear:%d:%d" % (op, k) for k in tear_bytes]:
            with open(os.path.join(base, "flash.bin"), "wb") as f:
                f.write(flash0)
            try:
                os.unlink(os.path.join(base, "reset"))
            except FileNotFoundError:
                pass
            run_device(code, base, fault=fault, heap_kib=heap_kib)
            r = run_device(check, base, heap_kib=heap_kib)
            n += 1
            if r.returncode or "OK" not in r.stdout:
                failures.append((fault, (r.stdout + r.stderr)[-500:]))
    if not workdir:
        shutil.rmtree(tmp, ignore_errors=True)
    return n, failures


NVS_SCENARIO = """
import esp32
n = esp32.NVS("ks")
for i in range(ROUNDS):
    n.set_blob("v", b"%04d" % i * 30)
    n.set_i32("i", i)
    n.commit()
"""

NVS_CHECK = """
import esp32
n = esp32.NVS("ks")
try:
    i = n.get_i32("i")
except OSError:
    i = -1
b = bytearray(200)
if i >= 0:
    L = n.get_blob("v", b)
    if bytes(b[:L]) != b"%04d" % i * 30:
        raise SystemExit("blob and counter from different commits")
print("OK", i)
"""


def nvs_sweep(rounds, tear_bytes=(5,)):
    """Every commit of `rounds` NVS batches, cut and torn: the counter and the
    blob written in the same commit always match afterwards."""
    return sweep(None, NVS_SCENARIO.replace("ROUNDS", str(rounds)), NVS_CHECK, tear_bytes=tear_bytes)
