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
import micropython
import os
import sys
import vfs

import espsim
import espboard
import simhost  # noqa: F401  (takes the host's vfs before the narrowing)

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


class _BoardModule:
    """A built-in module as the board has it: the unix port's module, with only
    the names firmware/profile/<chip>.surface lists for the chip. A name is
    copied in at its first use (a string of the allowed names is all it holds
    until then: the heap is the app's)."""

    def __init__(self, name, real, allowed):
        self.__name__ = name
        self._real = real
        self._names = " %s " % " ".join(allowed)

    def __getattr__(self, k):
        if (" %s " % k) not in self._names:
            raise AttributeError("the board's %s has no %s (firmware/profile)" % (self.__name__, k))
        v = getattr(self._real, k)
        setattr(self, k, v)
        return v


def _board_surface():
    # The unix port's built-in modules offer more than the ESP32 port's (os
    # has getenv and system, vfs has VfsPosix, ...) and some less. What the
    # device code imports from now on is the board's surface: an absent name
    # raises AttributeError as it would on the chip. esp32 and machine are
    # stand-ins that already drop what the chip lacks (espboard.honour), time is
    # the board's by construction; sys stays whole (start.py and the REPL use
    # it; the profile check, ictl.portprofile, covers the device code's uses).
    # The network and socket stand-ins (board/) talk to each other through
    # names the board lacks (network.link_up): socket is imported first, so
    # its own reference to network is the stand-in's whole module; only what
    # the device code imports from now on is narrowed.
    try:
        import socket  # noqa: F401
    except ImportError:
        pass
    for name in espboard.board_modules():
        if name in ("esp32", "machine", "time", "sys"):
            continue
        try:
            real = __import__(name)
        except ImportError:
            continue  # not on the unix port (esp, network): nothing to narrow
        allowed = espboard.surface(name)
        for k in dir(real):
            if k[0] != "_" and k not in allowed:
                # Something the board lacks (os.getenv, vfs.VfsPosix, ...): narrowed.
                sys.modules[name] = _BoardModule(name, real, allowed)
                break


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
_GC_BLOCK = 32 if sys.maxsize > 1 << 32 else 16  # bytes: four machine words
_POOL_JUMP = 512  # bytes: more than a qstr and its chunk; less than a pool of 64 entries


def _qstr_pool_ahead(limit=512):
    # The names in loaded code (qstrs) are interned in pools that the VM
    # allocates in the GC heap, each twice the size of the one before
    # (qstr_add in py/qstr.c, MicroPython v1.28.0). On an ESP32 the frozen
    # library's qstrs are in flash (the frozen ROM pool, MICROPY_QSTR_EXTRA_POOL);
    # on the unix port its ~1300 qstrs fill heap pools, and the next pool is
    # some 14 KiB (1280 entries of 11 bytes). If the loaded code leaves the
    # last pool nearly full, the app's first new name after the cap allocates
    # that pool in the app's heap, an ESP32's app never pays that: so start the
    # next pool now, with the code, by interning filler names until the VM
    # allocates it (seen as a jump in gc.mem_alloc()). The app then has that
    # whole pool's room for its own names. Returns the fillers interned.
    # Only a nearly full pool matters: at most `limit` fillers are interned.
    i = 0
    last = gc.mem_alloc()
    while i < limit:
        getattr(None, "~%x" % i, None)  # getattr interns its name (mp_obj_str_get_qstr)
        i += 1
        now = gc.mem_alloc()
        if now - last > _POOL_JUMP:
            return i
        last = now
    # No new pool within `limit` names: the last pool still has room for
    # that many, more than the app's own new names; interning on would only
    # spend the heap on fillers (qstrs are never freed).
    return i


def _cap_heap(kib):
    # The unix port keeps loaded code in the GC heap; an ESP32 runs it from
    # flash and gives the app a heap of its own. To run the app with the
    # budget an ESP32 would give it, load all the code first, then fill every
    # free block except one of `kib` KiB, which becomes the app's heap: the
    # whole of it, in one piece, as on a fresh ESP32 heap.
    _load_code()
    gc.collect()
    try:
        _qstr_pool_ahead()
    except MemoryError:
        # No room for the next pool beside the code: the app pays for it
        # (its heap is still capped below); never a failed boot for it.
        print("device: no room to start the next qstr pool before the cap")
    gc.collect()
    code = gc.mem_alloc()
    # The app's heap to be, less its object header, an mp_obj_array_t of four
    # words (py/objarray.h) in one GC block of four words
    # (MICROPY_BYTES_PER_GC_BLOCK, py/mpconfig.h): 32 bytes on a 64-bit build,
    # 16 on a 32-bit one (docs/unix32.md) as on the ESP32.
    heap = bytearray(kib * 1024 - _GC_BLOCK)
    hold = [None] * 4096
    _BALLAST.append(hold)
    i = 0
    b = 8192  # a tuple of 2b - 2 items is 2b words (py/objtuple.h: base, len, items)
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
if os.getenv("ESPSIM_FLASH_TIMING"):
    import flashtime  # noqa: F401  (each flash operation takes a board's time)
try:
    espsim.flash()
except espsim.SimError as e:
    print("device: " + str(e))
    sys.exit(1)
# Collect the start-up garbage before long-lived objects are made, or they
# land scattered through the heap and no large block is left for the app.
gc.collect()
_mount()
_board_surface()
gc.collect()
if not os.getenv("ESPSIM_SAME_BOOT"):
    # (Set when the relay continues a boot the unix port crashed on an
    # interrupt, ictl.sim.board: boot.py ran already, its trial attempt spent.)
    _run("boot.py")
if os.getenv("ESPSIM_DATA_HEAP_KIB"):
    # Not interruptible: a board has no such step. mpremote's Ctrl-C as a
    # board starts could land here, with the heap full of ballast, and the
    # unix port ended with "FATAL: uncaught NLR"; the relay then booted a new
    # process and mpremote waited for ever. With Ctrl-C off the unix port
    # leaves SIGINT at SIG_DFL and the relay sees that (ictl.sim.board,
    # _running_code): the byte goes to the REPL instead.
    micropython.kbd_intr(-1)
    _cap_heap(int(os.getenv("ESPSIM_DATA_HEAP_KIB")))
    micropython.kbd_intr(3)
if not (os.getenv("ESPSIM_RAW_REPL") or os.getenv("ESPSIM_SAME_BOOT")):
    _run("main.py")
