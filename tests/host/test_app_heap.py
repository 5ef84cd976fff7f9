"""The virtual board models an ESP32's heap: all code (frozen library, board
modules, the verified app) is loaded first and held apart, as an ESP32 keeps
it in flash, and the app gets ESPSIM_DATA_HEAP_KIB of heap in one piece.
`ictl run` (test_run.py) runs the whole agent this way with 64 KiB."""
import os
import subprocess

from mphelp import MICROPYTHON

from ictl.sim import board as vboard
from ictl.sim import device as sim_device
from ictl.sim import factory
from ictl import image as app_image
from ictl.sim import unixfw

PROBE = """
import gc, sys
gc.collect()
print("FREE", gc.mem_free())
try:
    a = bytearray(60 * 1024)
    print("BLOCK60 ok")
except MemoryError:
    print("BLOCK60 fail")
a = None
gc.collect()
try:
    a = bytearray(66 * 1024)
    print("BLOCK66 ok")
except MemoryError:
    print("BLOCK66 fail")
print("LOADED", "ironclad.update" in sys.modules and "ironclad.mqtt" in sys.modules)
"""


def _probe(tmp_path, capped, probe=PROBE, port_kib=vboard.PORT_HEAP_KIB, **modules):
    # The probe is the app: built, signed, flashed, verified at boot and run
    # by the frozen main.py, the way the agent is.
    dev = tmp_path / "dev"
    sim_device.create(str(dev))
    src = tmp_path / "app"
    src.mkdir()
    (src / "main.py").write_text(probe)
    for name, text in modules.items():
        (src / (name + ".py")).write_text(text)
    key = tmp_path / "signing.pem"
    app_image.keygen(str(key))
    factory.setup_device(str(dev), str(src), str(key))
    fw = unixfw.build()
    env = dict(os.environ, MICROPYPATH=":".join(os.path.join(fw, p) for p in ("lib/ironclad", "firmware/unix")),
               ESPSIM_DIR=str(dev))
    env.pop("ESPSIM_DATA_HEAP_KIB", None)
    if capped:
        env.update(vboard.app_heap_env())
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % port_kib,
                        os.path.join(fw, "firmware", "unix", "start.py")],
                       capture_output=True, text=True, timeout=60, cwd=str(dev), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FREE" in r.stdout, r.stdout  # the probe ran
    return r.stdout


def test_app_gets_exactly_its_heap_in_one_piece(tmp_path):
    out = _probe(tmp_path, capped=True)
    assert "device: %d KiB heap for the app" % vboard.APP_HEAP_KIB in out
    free = int(out.split("FREE ")[1].split()[0])
    # Never more than the budget; a little less, because the port compiles the
    # frozen main.py from source and loads the probe after the cap.
    assert vboard.APP_HEAP_KIB * 1024 - 4096 <= free <= vboard.APP_HEAP_KIB * 1024 + 64, free
    assert "BLOCK60 ok" in out  # one piece: a 60 KiB block fits
    assert "BLOCK66 fail" in out  # and nothing beyond the budget
    assert "LOADED True" in out  # the code was loaded before the app's heap was set


def test_without_the_cap_the_port_heap_is_all_there(tmp_path):
    # The negative control: the same probe on the uncapped port heap.
    out = _probe(tmp_path, capped=False)
    assert "heap for the app" not in out
    assert "BLOCK66 ok" in out


# An app module, loaded with the code before the cap, that leaves the VM's
# last qstr pool (py/qstr.c: each pool twice the size of the one before) 8
# names short of full: it interns names until a new pool appears (a jump in
# gc.mem_alloc()), counts the next pool's P entries until the one after (2P)
# appears, then fills all but 8 entries of that one.
NEAR_FULL_POOL = """
import gc


def _to_next_pool(i):
    last = gc.mem_alloc()
    while True:
        getattr(None, "@%x" % i, None)  # interns the name
        i += 1
        now = gc.mem_alloc()
        if now - last > 512:
            return i
        last = now


_i = _to_next_pool(0)
_j = _to_next_pool(_i)
for _k in range(_j, _j + 2 * (_j - _i) - 1 - 8):
    getattr(None, "@%x" % _k, None)
"""

NEW_NAMES = """
import gc
gc.collect()
free = gc.mem_free()
print("FREE", free)
try:
    for i in range(32):
        getattr(None, "%%%x" % i, None)  # 32 names the loaded code never used
    gc.collect()
    print("NAMES cost", free - gc.mem_free())
except MemoryError:
    print("NAMES cost MemoryError")
"""


def test_the_apps_first_new_names_do_not_cost_it_a_qstr_pool(tmp_path):
    # The loaded code's names fill qstr pools that are held apart with the code
    # (on an ESP32 the frozen library's qstrs are in flash). If they leave the
    # last pool nearly full, the app's first new names must not allocate the
    # next one (14 KiB and more on the unix port) in the app's heap: start.py
    # starts it before the cap (_qstr_pool_ahead).
    # (A larger port heap: the module's two pools and the one after them are
    # held apart with the code, ~120 KiB on top of it;
    # 2 MiB since the flash-encryption stand-in's names moved the pools' doubling.)
    out = _probe(tmp_path, capped=True, probe=NEW_NAMES, port_kib=2048, nearfull=NEAR_FULL_POOL)
    assert "device: %d KiB heap for the app" % vboard.APP_HEAP_KIB in out, out
    cost = out.split("NAMES cost ")[1].split()[0]
    assert cost.isdigit() and int(cost) < 1024, out  # the names' bytes, not a pool
    assert int(out.split("FREE ")[1].split()[0]) >= vboard.APP_HEAP_KIB * 1024 - 4096, out  # and the heap is whole
