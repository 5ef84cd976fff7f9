"""Verified-boot scenarios on simulated devices, shared by the tests, `make
bench` and `make soak`: small test apps, device snippets that run with the
board's trust module and the event log redirected, and boots through the
firmware start-up (firmware/unix/start.py) exactly as a board boots."""
import os
import subprocess

from ictl import ROOT
from ictl import device as sim_device
from ictl import image, unixfw
from ictl.faults import MICROPYTHON


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
    """The precompiled frozen tree devices here boot from (ictl.unixfw)."""
    global _fw
    if _fw is None:
        _fw = unixfw.build()
    return _fw


def start():
    """The firmware start-up script of the precompiled tree."""
    return os.path.join(firmware(), "firmware", "unix", "start.py")


def env(devdir, extra=None):
    fw = firmware()
    path = ":".join([".frozen", fw + "/lib/ironclad", fw + "/firmware/unix", image.board_dir(devdir)])
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


def run(devdir, code, heap_kib=112, fault=None, timeout=120):
    """A MicroPython snippet on the device, with its board's trust module."""
    e = env(devdir, {"ESPSIM_FAULT": fault} if fault else None)
    return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % heap_kib, "-c", snippet(devdir, code)],
                          env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def boot(devdir, heap_kib=112, fault=None, raw_repl=False, timeout=120):
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


def new_device(devdir, keys, retired=()):
    """A fresh board whose firmware trusts keys [(key id, private key)]."""
    sim_device.create(str(devdir), force=True)
    image.trust_device(str(devdir), [(kid, k.public_key()) for kid, k in keys], retired)
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
from ironclad import bootstate
try:
    h = bootstate.install_file(%r, %r)
    print("INSTALLED", h.describe())
except Exception as e:
    print("REFUSED", repr(e))
"""


def install(devdir, path, label=None):
    """The device-side install path (recovery and full updates) for an image file."""
    return run(devdir, INSTALL % (path, label))
