"""Platform figures: simulated-device start-up and slot-to-slot flash copy."""
import os
import subprocess
import time

from ictl import ROOT
from ictl.sim import device as sim_device, unixfw
from ictl.sim.faults import MICROPYTHON, run_device
from ictl.measure.figures import best_of



def _wall(cmd, env=None):
    t = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, timeout=120, cwd=ROOT)
    return time.perf_counter() - t


def bench_boot(fig, tmp):
    start = os.path.join(unixfw.build(), "firmware", "unix", "start.py")  # the precompiled firmware, as boards boot
    dev = os.path.join(tmp, "boot")
    sim_device.create(dev)
    env = dict(os.environ, ESPSIM_DIR=dev)
    _wall([MICROPYTHON, start], env)  # first boot formats the filesystem
    base = best_of(lambda: _wall([MICROPYTHON, "-c", "pass"]))
    boot = best_of(lambda: _wall([MICROPYTHON, "-X", "heapsize=96K", start], env))
    fig.add("board_boot_ratio", round(boot / base, 2), "ratio",
            "unix-port start-up of a simulated device with no app image (flash, bootloader, littlefs mount, boot.py "
            "finding nothing to verify: recovery mode) "
            "/ bare `micropython -c pass`; %.1f ms vs %.1f ms" % (boot * 1e3, base * 1e3))


COPY = """
import esp32, time
P = esp32.Partition
a = P.find(P.TYPE_DATA, label="app_a")[0]
b = P.find(P.TYPE_DATA, label="app_b")[0]
buf = bytearray(4096)
N = 64  # 256 KiB
t = time.ticks_us()
for i in range(N):
    a.readblocks(i, buf)
    b.writeblocks(i, buf)
slot = time.ticks_diff(time.ticks_us(), t)
# Baseline: the same bytes between two plain files on the host.
f = open(TMP + "/src.bin", "wb")
for i in range(N):
    f.write(buf)
f.close()
t = time.ticks_us()
src = open(TMP + "/src.bin", "rb"); dst = open(TMP + "/dst.bin", "wb")
for i in range(N):
    src.readinto(buf)
    dst.write(buf)
src.close(); dst.close()
raw = time.ticks_diff(time.ticks_us(), t)
print(slot, raw)
"""


def bench_flash(fig, tmp):
    dev = os.path.join(tmp, "flash")
    sim_device.create(dev)
    best = None
    for _ in range(5):
        r = run_device(COPY.replace("TMP", repr(tmp)), dev)
        slot, raw = map(int, r.stdout.split())
        if best is None or slot / raw < best[0] / best[1]:
            best = (slot, raw)
    fig.add("flash_copy_ratio", round(best[0] / best[1], 2), "ratio",
            "256 KiB slot-to-slot copy through esp32.Partition (erase + NOR write) / the same bytes file-to-file "
            "on the unix port; %d us vs %d us" % best)


def run(fig, tmp, args):
    bench_boot(fig, tmp)
    bench_flash(fig, tmp)
