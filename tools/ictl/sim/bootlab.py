"""Verified-boot scenarios on simulated devices, shared by the tests, `make
bench` and `make soak`: small test apps, device snippets that run with the
board's trust module and the event log redirected, and boots through the
firmware start-up (firmware/unix/start.py) exactly as a board boots."""
import json
import os
import subprocess

from ictl import ROOT, image
from ictl.sim import device as sim_device
from ictl.sim import factory
from ictl.sim import unixfw
from ictl.sim.faults import MICROPYTHON


APP_MAIN = """# test app %(version)s
from ironclad import bootstate
print("APP-RUN %(version)s")
if %(confirm)r:
    print("APP-CONFIRM", bootstate.confirm())
"""


def make_app(path, version, confirm=False, pad=0):
    """An app source folder whose main prints APP-RUN <version> (and confirms
    itself when asked); pad adds a data file of that many pseudo-random bytes."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "main.py"), "w") as f:
        f.write(APP_MAIN % {"version": version, "confirm": confirm})
    if pad:
        import hashlib

        data = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range((pad + 31) // 32))[:pad]
        with open(os.path.join(path, "blob.bin"), "wb") as f:
            f.write(data)
    return path


_fw = None


def firmware():
    """The precompiled frozen tree devices here boot from (ictl.sim.unixfw)."""
    global _fw
    if _fw is None:
        _fw = unixfw.build()
    return _fw


def start():
    """The firmware start-up script of the precompiled tree."""
    return os.path.join(firmware(), "firmware", "unix", "start.py")


def env(devdir, extra=None):
    fw = firmware()
    path = ":".join([".frozen", fw + "/lib/ironclad", fw + "/firmware/unix", factory.board_dir(devdir)])
    e = dict(os.environ, MICROPYPATH=path, ESPSIM_DIR=str(devdir), ESPSIM_FIRMWARE=fw)
    e.pop("ESPSIM_FAULT", None)
    e.update(extra or {})
    return e


# Device snippets run outside the firmware start-up (no littlefs mounted):
# the event log goes to a host file in the device directory.
PRELUDE = "from ironclad import events\nevents.PATH = %r\nevents.SENT_PATH = %r\n"


def snippet(devdir, code):
    d = str(devdir)
    return PRELUDE % (d + "/events.bin", d + "/events.sent") + code


# The boot path's heap here: the library compiled from source and the stand-ins
# for the port's C modules share it (on a board both are in flash). 112 left
# the boot labs no margin once flash encryption was modelled (a 6-line hook
# ran them out), and compiling fragments the heap differently from checkout
# to checkout: margin, not a budget. The image map limit (MAP_MAX) is what
# bounds a boot's allocation, and tests exercise it directly.
BOOT_HEAP_KIB = 160


def run(devdir, code, heap_kib=BOOT_HEAP_KIB, fault=None, timeout=120):
    """A MicroPython snippet on the device, with its board's trust module."""
    e = env(devdir, {"ESPSIM_FAULT": fault} if fault else None)
    return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, "-c", snippet(devdir, code)],
                          env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def boot(devdir, heap_kib=BOOT_HEAP_KIB, fault=None, raw_repl=False, timeout=120):
    """Boot the board as the firmware does: bootloader, littlefs, boot.py, main.py."""
    extra = {"ESPSIM_FAULT": fault} if fault else {}
    if raw_repl:
        extra["ESPSIM_RAW_REPL"] = "1"
    return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, start()], env=env(devdir, extra),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def ran(result):
    """The version of the app a boot ran, or None (recovery or a crash)."""
    for line in result.stdout.splitlines():
        if line.startswith("APP-RUN "):
            return line.split()[1]
    return None


def new_device(devdir, keys, retired=(), flash_encryption=True):
    """A fresh board whose firmware trusts keys [(key id, private key)]
    (a production board, flash encryption on, unless told otherwise)."""
    sim_device.create(str(devdir), force=True, flash_encryption=flash_encryption)
    factory.trust_device(str(devdir), [(kid, k.public_key()) for kid, k in keys], retired)
    return str(devdir)


def slot_range(devdir, label):
    cfg = sim_device.load(str(devdir))
    p = next(p for p in cfg["partitions"] if p["label"] == label)
    return p["offset"], p["offset"] + p["size"]


def flash_outside(devdir, labels=("bootstate", "vfs")):
    """flash.bin with the given partitions blanked out: what must not change."""
    with open(os.path.join(str(devdir), "flash.bin"), "rb") as f:
        data = bytearray(f.read())
    for label in labels:
        a, b = slot_range(devdir, label)
        data[a:b] = bytes(b - a)
    return bytes(data)


INSTALL = """
from ironclad import slots
try:
    h = slots.install_file(%r, %r)
    print("INSTALLED", h.describe())
except Exception as e:
    print("REFUSED", repr(e))
"""


def install(devdir, path, label=None):
    """The device-side install path (recovery and full updates) for an image file."""
    return run(devdir, INSTALL % (path, label))


# -- exceptions injected into the boot path --------------------------------------
#
# FAULT_BOOT boots the board through the firmware start-up, as boot() does,
# with the steps of the boot path wrapped: each call of a step is numbered in
# the order of the boot, and a fault [step, index, slot, kind] raises `kind`
# at call number `index` (index -1: at every call of `step` made for `slot`,
# a fault that is there at every boot). Steps: the boot flow entered ("boot"),
# the boot state record read and written, the trust module, the header read,
# the header checks, the RSA-PSS check, every read of an app slot, the map,
# vfs.VfsRom, the mount at /app and the record of what booted. The slot of a
# call is the one the boot flow is trying (None outside a slot). Kinds:
# OSError, MemoryError, AttributeError (a feature the firmware lacks, as a
# stock build lacks vfs.VfsRom), ValueError, and "reset" (the chip resets at
# that point: a panic, the watchdog, a brown-out). The modules are the
# firmware's own; only the calls between them are wrapped.
STEPS = ("boot", "state.read", "state.write", "trust", "header", "check", "signature", "flash.read", "map",
         "VfsRom", "mount", "set_booted")
KINDS = ("OSError", "MemoryError", "AttributeError", "ValueError")

FAULT_BOOT = r"""
import sys, json
import vfs as _vfs
import esp32, espsim
import ironclad
from ironclad import bootflow, bootstate, image

# Imported from the host path, before start.py mounts the firmware at
# /.frozen; the package's other modules load from there, as on a board.
ironclad.__path__ = "/.frozen/lib/ironclad/ironclad"
FAULTS = json.loads(%(faults)r)
TRACE = []
CUR = [None]
ON = [False]


def _raise(kind, name):
    if kind == "OSError":
        raise OSError(5, "EIO")
    if kind == "MemoryError":
        raise MemoryError("memory allocation failed")
    if kind == "AttributeError":
        raise AttributeError("'module' object has no attribute '%%s'" %% name)
    if kind == "ValueError":
        raise ValueError(name)
    if kind == "reset":
        espsim.reset("HARD")
    raise RuntimeError(kind)


def _step(name):
    if not ON[0]:
        return
    i = len(TRACE)
    TRACE.append([name, CUR[0]])
    for step, idx, slot, kind in FAULTS:
        if idx == i or (idx < 0 and step == name and slot == CUR[0]):
            print("FAULT", i, name, CUR[0], kind)
            _raise(kind, name)


def _wrap(mod, attr, name):
    f = getattr(mod, attr)

    def w(*a, **k):
        _step(name)
        return f(*a, **k)
    setattr(mod, attr, w)


for _m, _a, _n in ((bootstate, "read", "state.read"), (bootstate, "write", "state.write"),
                   (bootstate, "set_booted", "set_booted"), (image, "trust", "trust"),
                   (image, "read_header", "header"), (image, "check", "check"),
                   (image, "_signature_ok", "signature"), (image, "map_payload", "map")):
    _wrap(_m, _a, _n)

_rb = esp32.Partition.readblocks


def _readblocks(self, *a):
    if self.info()[4] in bootstate.SLOTS:
        _step("flash.read")
    return _rb(self, *a)


esp32.Partition.readblocks = _readblocks
_load = bootflow._load


def _load_slot(label, *a):
    CUR[0] = label
    try:
        return _load(label, *a)
    finally:
        CUR[0] = None


bootflow._load = _load_slot
_boot = bootflow.boot


def _boot_path(*a):
    ON[0] = True
    try:
        _step("boot")
        return _boot(*a)
    finally:
        ON[0] = False


bootflow.boot = _boot_path


class _Vfs:
    # The firmware's vfs module, with VfsRom and the mount at /app as steps.
    def __getattr__(self, name):
        return getattr(_vfs, name)


def _vfsrom(*a):
    _step("VfsRom")
    return _vfs.VfsRom(*a)


def _mount(fs, where, **kw):
    if where == "/app":
        _step("mount")
    return _vfs.mount(fs, where, **kw)


V = _Vfs()
V.VfsRom = _vfsrom
V.mount = _mount
sys.modules["vfs"] = V
try:
    exec(open(%(start)r).read(), {"__name__": "__main__"})
except Exception as e:
    # On a locked board _boot.py resets the chip here: a loop if it recurs.
    print("ESCAPED", type(e).__name__, e)
    sys.exit(3)
print("TRACE", json.dumps(TRACE))
"""


class Boot:
    """What one boot did: the app version it ran (None: none), on trial or
    not, recovery mode, the boot events, the step trace, and whether it
    ended as a board resets (an exception out of boot.py, or a reset)."""

    def __init__(self, r):
        out = r.stdout
        self.result = r
        self.ran = ran(r)
        self.trial = any(l.startswith("ironclad: boot ") and l.endswith("(trial)") for l in out.splitlines())
        self.recovery = "ironclad: recovery mode" in out
        self.events = [l.split()[2:5] for l in out.splitlines() if l.startswith("ironclad: event boot ")]
        self.trace = next((json.loads(l[6:]) for l in out.splitlines() if l.startswith("TRACE ")), None)
        self.escaped = r.returncode != 0 or "ESCAPED" in out or "Traceback" in r.stderr

    def ok(self, allowed):
        """Ended as it must: a verified, allowed app runs, or recovery mode
        with an event; and the boot came to its end (no reset)."""
        if self.escaped:
            return False
        if self.ran is not None:
            return self.ran in allowed and not self.recovery
        return self.recovery and bool(self.events)

    def __repr__(self):
        return "Boot(ran=%r trial=%r recovery=%r events=%r escaped=%r)" % (
            self.ran, self.trial, self.recovery, self.events, self.escaped)


def fault_boot(devdir, faults=(), heap_kib=160, extra_env=None, timeout=60):
    """Boot once with faults [(step, index, slot, kind)] injected; a Boot.
    160 KiB: the fault harness and its tracing wrappers are compiled from
    source into the same heap as the boot path (a board runs it frozen),
    beside the flash-encryption stand-in; the boot's own budget is held by
    boot() at 112 KiB (tests/host/test_boot.py)."""
    code = FAULT_BOOT % {"faults": json.dumps([list(f) for f in faults]), "start": start()}
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, "-c", code], env=env(devdir, extra_env),
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return Boot(r)


def set_bootstate(devdir, active, trial=False, attempts=0, fallback=None, floor=0):
    """A fresh boot state record in copy 0 (copy 1 erased), as factory flashing writes it."""
    rec = factory.bootstate_record(image.SLOTS.index(active), 1, floor, trial, attempts,
                                 image.SLOTS.index(fallback) if fallback else factory.NO_SLOT)
    a, b = slot_range(devdir, factory.BOOTSTATE_PART)
    write_flash(devdir, a, b"\xff" * (b - a))  # erased (esptool erases before it writes)
    sim_device.write_flash(str(devdir), a, rec)  # encrypted under flash encryption, as esptool --encrypt


def read_flash(devdir, a, b):
    """The raw flash of [a, b) (under flash encryption, ciphertext): a
    snapshot for write_flash to put back."""
    with open(os.path.join(str(devdir), "flash.bin"), "rb") as f:
        f.seek(a)
        return f.read(b - a)


def write_flash(devdir, a, data):
    """Raw bytes into flash.bin: a snapshot from read_flash put back, or an
    erase (0xFF). Plaintext for an encrypted partition goes through
    ictl.sim.device.write_flash."""
    with open(os.path.join(str(devdir), "flash.bin"), "r+b") as f:
        f.seek(a)
        f.write(data)
