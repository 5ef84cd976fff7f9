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
    sys.path[:] = [".frozen", "/.frozen/lib/ironclad", "/.frozen/firmware/unix"] + extra


def _run(name):
    path = "/.frozen/" + name
    try:
        os.stat(path)
    except OSError:
        return
    g = {"__name__": "__main__", "__file__": path}
    with open(path) as f:
        exec(f.read(), g)


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
if not os.getenv("ESPSIM_RAW_REPL"):
    _run("main.py")
