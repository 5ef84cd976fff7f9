"""Host-side helpers for running device code on the MicroPython unix port."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from ictl.sim import MICROPYTHON  # noqa: E402  (IRONCLAD_MICROPYTHON picks another build)
from ictl.sim.wifisim import LAB_NET  # noqa: E402

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
# The stand-ins for the port's C modules (esp32, machine, time and the port
# profile they hold to, flash encryption) take several KiB of the unix port's
# heap (a board has them in C), and the library is compiled from source into it
# (frozen in flash on a board). 112 left some files no margin: how fragmented
# compiling leaves the heap varies between checkouts, and CI failed on it.
# 160 is margin, not budget: the app's own 64 KiB is held by the virtual board.
DEFAULT_HEAP_KIB = 160
MICROPYPATH = ":".join([".frozen"] + [os.path.join(ROOT, p) for p in ("lib/ironclad", "firmware/unix", "tests/device")])
# The virtual board's simulated Wi-Fi and socket gate (start.py puts it on the path).
BOARD_NET = os.path.join(ROOT, "firmware", "unix", "board")
VECTORS_SRC = os.path.join(ROOT, "tests", "vectors", "wycheproof")
VECTORS_DIR = os.path.join(ROOT, "build", "vectors")
START = os.path.join(ROOT, "firmware", "unix", "start.py")
SIGKILL_RC = -9  # a power cut or a reset ends the device process with SIGKILL


def mp_env(devdir=None, fault=None, extra=None, lab_net=True):
    """lab_net: the simulated radio on and its link up from the start
    (ictl.wifisim.LAB_NET), for code that drives library modules without
    the boot path; a virtual board's boot (boot()) starts with it off."""
    env = dict(os.environ, **(LAB_NET if lab_net else {}))
    env["MICROPYPATH"] = MICROPYPATH if lab_net else BOARD_NET + ":" + MICROPYPATH
    env["IC_VECTORS"] = VECTORS_DIR
    env.pop("ESPSIM_FAULT", None)
    if devdir:
        env["ESPSIM_DIR"] = str(devdir)
    if fault:
        env["ESPSIM_FAULT"] = fault
    env.update(extra or {})
    return env


def run_mp(code, devdir=None, heap_kib=DEFAULT_HEAP_KIB, fault=None, timeout=60, env=None, args=()):
    """Run a MicroPython snippet; returns CompletedProcess (text output)."""
    return subprocess.run(
        [MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, "-c", code, *args],
        env=mp_env(devdir, fault, env), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def boot(devdir, heap_kib=DEFAULT_HEAP_KIB, fault=None, timeout=60, env=None):
    """Boot a device the way the firmware does (start.py) without a REPL."""
    return subprocess.run(
        [MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, START],
        env=mp_env(devdir, fault, env, lab_net=False), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def prepare_vectors():
    """Wycheproof JSON -> one JSON line per case (with its group's fields under
    "group"), so a device with a 96 KiB heap can stream them."""
    os.makedirs(VECTORS_DIR, exist_ok=True)
    for name in sorted(os.listdir(VECTORS_SRC)):
        if not name.endswith(".json"):
            continue
        src = os.path.join(VECTORS_SRC, name)
        dst = os.path.join(VECTORS_DIR, name[:-5] + ".jsonl")
        if os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
            continue
        with open(src) as f:
            doc = json.load(f)
        tmp = dst + ".tmp.%d" % os.getpid()
        with open(tmp, "w") as out:
            for g in doc["testGroups"]:
                group = {k: v for k, v in g.items() if k != "tests"}
                for t in g["tests"]:
                    out.write(json.dumps(dict(t, group=group), separators=(",", ":")) + "\n")
        os.replace(tmp, dst)
