# The unix port's stand-in for the ESP32 firmware start-up (main.c and the
# frozen _boot.py): open the simulated flash, run the simulated bootloader,
# mount littlefs from the "vfs" partition at / (formatting it on first boot, as
# MicroPython's inisetup does), expose the frozen modules read-only at
# /.frozen, then run the frozen boot.py and, unless the board was soft-reset
# into the raw REPL, the frozen main.py.
#
# The frozen code is the repo's (boot.py, main.py, lib/) plus the board's own
# generated modules in <device dir>/board/ (ironclad_trust.py: the trusted
# image keys and the hardware id, from `ictl image trust`), which an ESP32
# firmware build freezes in the same way; they appear read-only at /.board.
# Run as:
#   ESPSIM_DIR=<device dir> micropython -i firmware/unix/start.py
import gc
import os
import sys
import vfs

import espsim

# The repo root: what an ESP32 build freezes (boot.py, main.py, lib/).
_FW = os.getenv("ESPSIM_FIRMWARE") or sys.argv[0].rsplit("/firmware/", 1)[0]


def _mount():
    import esp32

    gc.collect()
    esp32.Partition(esp32.Partition.RUNNING)  # the bootloader runs before anything else
    bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(vfs.VfsPosix(_FW), "/.frozen", readonly=True)
    board = espsim.devdir() + "/board"
    try:
        os.stat(board)
        vfs.mount(vfs.VfsPosix(board), "/.board", readonly=True)
        extra = ["/.board"]
    except OSError:
        extra = []
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    # Frozen code only: nothing on the writable filesystem is ever imported
    # (a dropped /ironclad/ directory or main.py must not shadow the firmware).
    # board/: the simulated Wi-Fi and the socket gate (network.py, socket.py),
    # over the lab's always-up station, unless a lab boots the board (ESPSIM_NET=up).
    net = [] if os.getenv("ESPSIM_NET") == "up" else ["/.frozen/firmware/unix/board"]
    sys.path[:] = [".frozen", "/.frozen/lib/ironclad"] + net + ["/.frozen/firmware/unix"] + extra


def _run(name):
    path = "/.frozen/" + name
    try:
        os.stat(path)
    except OSError:
        return
    g = {"__name__": "__main__", "__file__": path}
    with open(path) as f:
        exec(f.read(), g)


def _load_code():
    # Everything an ESP32 keeps in flash: the frozen library, the board's
    # modules and the verified app (mounted at /app by boot.py).
    for d, pkg in (("/.frozen/lib/ironclad/ironclad", "ironclad."), ("/.board", ""), ("/app", "")):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for f in names:
            m = f.rsplit(".", 1)[0]
            if f.endswith((".mpy", ".py")) and m not in ("main", "__init__"):
                __import__(pkg + m)
    import ssl  # noqa: F401  (frozen into the port; its objects still land here)
    import esp32

    esp32._nvs_store()  # the ESP32's NVS cache is C memory, outside the app's heap


_BALLAST = []


def _cap_heap(kib):
    # The unix port keeps loaded code in the GC heap; an ESP32 runs it from
    # flash and gives the app a heap of its own. To run the app with the
    # budget an ESP32 would give it, load all the code first, then fill every
    # free block except one of `kib` KiB, which becomes the app's heap: the
    # whole of it, in one piece, as on a fresh ESP32 heap.
    _load_code()
    gc.collect()
    code = gc.mem_alloc()
    heap = bytearray(kib * 1024 - 32)  # the app's heap to be (32: its object header)
    hold = [None] * 4096
    _BALLAST.append(hold)
    i = 0
    b = 8192  # blocks of 16 bytes: a tuple of k items is 16 + 8k bytes
    while b and i < len(hold):
        try:
            while i < len(hold):
                hold[i] = (None,) * (2 * b - 2) if b > 1 else i * 0.5  # a float is one block
                i += 1
        except MemoryError:
            b >>= 1
    heap = None
    gc.collect()
    print("device: %d KiB heap for the app; its %d KiB of loaded code held apart, as an ESP32 keeps code in flash"
          % (gc.mem_free() // 1024, code // 1024))


gc.collect()
try:
    espsim.flash()
except espsim.SimError as e:
    print("device: " + str(e))
    sys.exit(1)
# Collect the start-up garbage before long-lived objects are made, or they
# land scattered through the heap and no large block is left for the app.
gc.collect()
_mount()
gc.collect()
_run("boot.py")
if os.getenv("ESPSIM_DATA_HEAP_KIB"):
    _cap_heap(int(os.getenv("ESPSIM_DATA_HEAP_KIB")))
if not os.getenv("ESPSIM_RAW_REPL"):
    _run("main.py")
