"""Factory flashing of a simulated device, as esptool and a firmware build
leave a board: the trust module compiled into the board's firmware tree, an
app image written into a slot, the boot state record that makes it active."""
import binascii
import os
import struct
import subprocess

from ictl import ToolError, image
from ictl.sim import unixfw
from ictl.sim.device import load, read_flash, write_flash

# The boot state record (lib/ironclad/ironclad/bootstate.py), two copies in the bootstate partition.
BOOTSTATE_FMT = "<4sBBBBIIB11s"
BOOTSTATE_PART = "bootstate"
NO_SLOT = 0xFF


def board_dir(devdir):
    return os.path.join(devdir, "board")


def trust_device(devdir, keys, retired=(), min_counter=0, map_max=image.MAP_MAX):
    """Give a simulated board a firmware that trusts these keys: the module
    compiled into its board/ dir (as a firmware build freezes it: no
    on-device compile), its source kept in board/src/. Returns the source."""
    cfg = load(devdir)
    src = os.path.join(board_dir(devdir), "src", image.TRUST_MODULE)
    image.write_trust(src, keys, cfg["hwid"], retired, min_counter, map_max)
    out = os.path.join(board_dir(devdir), image.TRUST_MODULE[:-3] + ".mpy")
    r = subprocess.run([unixfw.MPY_CROSS, "-o", out + ".tmp", src], capture_output=True, text=True)
    if r.returncode:
        raise ToolError("mpy-cross %s: %s" % (src, r.stderr.strip()))
    os.replace(out + ".tmp", out)
    return src


def _partition(cfg, label):
    for p in cfg["partitions"]:
        if p["label"] == label:
            return p
    raise ToolError("the device's partition table has no %s partition" % label)


def bootstate_record(active, seq, floor=0, trial=False, attempts=0, fallback=NO_SLOT):
    body = struct.pack(BOOTSTATE_FMT, b"ICBS", 1, active, 1 if trial else 0, attempts, seq, floor,
                       fallback, bytes(11))
    return body + struct.pack("<I", binascii.crc32(body))


def read_bootstate(devdir):
    """The device's newest valid boot state record as a dict, or None."""
    cfg = load(devdir)
    p = _partition(cfg, BOOTSTATE_PART)
    best = None
    for i in range(2):
        rec = read_flash(devdir, p["offset"] + i * 4096, 32)  # decrypted under flash encryption
        if struct.unpack("<I", rec[28:])[0] != binascii.crc32(rec[:28]):
            continue
        magic, ver, active, trial, attempts, seq, floor, fallback, _ = struct.unpack(BOOTSTATE_FMT, rec[:28])
        if magic != b"ICBS" or ver != 1:
            continue
        st = {"active": image.SLOTS[active], "trial": bool(trial), "attempts": attempts, "seq": seq, "floor": floor,
              "fallback": image.SLOTS[fallback] if fallback != NO_SLOT else None, "copy": i}
        if best is None or seq > best["seq"]:
            best = st
    return best


def flash_image(devdir, data, slot="app_a", active=True, floor=0):
    """Factory flashing, as esptool writes a board: the slot is erased and the
    image written; with active, the boot state makes it the confirmed active
    image (a fresh record in copy 0, the other copy erased)."""
    cfg = load(devdir)
    if slot not in image.SLOTS:
        raise ToolError("slot must be one of %s" % ", ".join(image.SLOTS))
    p = _partition(cfg, slot)
    if len(data) > p["size"]:
        raise ToolError("image of %d bytes does not fit the %d-byte slot %s" % (len(data), p["size"], slot))
    # Under flash encryption esptool writes the image encrypted; the rest of
    # the slot and of the boot state stays erased (0xFF on flash: noise to
    # software).
    _erase(devdir, p["offset"], p["size"])
    write_flash(devdir, p["offset"], data)
    if active:
        b = _partition(cfg, BOOTSTATE_PART)
        _erase(devdir, b["offset"], b["size"])
        write_flash(devdir, b["offset"], bootstate_record(image.SLOTS.index(slot), 1, floor))


def _erase(devdir, addr, n):
    with open(os.path.join(devdir, "flash.bin"), "r+b") as f:
        f.seek(addr)
        f.write(b"\xff" * n)


def setup_device(devdir, src, key_path, version="1.0.0", counter=1, key_id=None, slot="app_a"):
    """One call for tests and `make run`: the board trusts key_path's public key,
    the app folder src is built, signed and flashed as the confirmed active
    image. Returns the image bytes."""
    cfg = load(devdir)
    key = image.load_private(key_path)
    kid = key_id or image.key_id_for(key.public_key())
    trust_device(devdir, [(kid, key.public_key())])
    img = image.build(src, key, kid, version, counter, cfg["hwid"])
    flash_image(devdir, img, slot)
    return img
