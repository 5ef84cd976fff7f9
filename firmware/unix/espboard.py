# The board as upstream builds it, for the stand-ins on the unix port: the
# chip (ESP32 or ESP32-S3), the port profile's surface of each board module
# (firmware/profile/<chip>.surface, from `ictl firmware profile`), and what
# flash encryption makes of an encrypted partition's erased flash. Apart from
# espsim so each compiles within a small heap.
import os
import json
import struct

import espsim
from espsim import SimError, devdir

# --- the port profile ------------------------------------------------------------
#
# firmware/profile/<chip>.surface (from `ictl firmware profile`, read from
# MicroPython v1.28.0's C tables with our board headers) lists what each
# board module and class has on the chip. The stand-ins drop whatever the
# board lacks, so a call the board would refuse fails here too.

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_chip = None


def chip():
    """The simulated chip: $ESPSIM_CHIP, else device.json's "chip", else esp32."""
    global _chip
    if _chip is None:
        c = os.getenv("ESPSIM_CHIP")
        if not c:
            try:
                with open(devdir() + "/device.json") as f:
                    c = json.load(f).get("chip")
            except (OSError, ValueError):
                c = None
        _chip = c or "esp32"
    return _chip


_profile = None  # the surface file, kept open: after start.py mounts the
# device's own filesystem at / the host path no longer resolves.


def _profile_file():
    global _profile
    if _profile is None:
        path = os.getenv("ESPSIM_PROFILE") or (_HERE + "/../profile/" + chip() + ".surface")
        try:
            _profile = open(path)
        except OSError:
            raise SimError("no port profile %s: run `ictl firmware profile`" % path)
    _profile.seek(0)
    return _profile


def surface(name):
    """The names `name` (a module, or module.Class) has on the board, or None
    when the profile does not describe it."""
    key = name + " "
    for line in _profile_file():
        if line.startswith(key) or line.rstrip("\n") == name:
            return line.split()[1:]
    return None


def board_modules():
    """The modules the port profile describes, by name."""
    out = []
    for line in _profile_file():
        name = line.split(" ", 1)[0].strip()
        if name and name[0] != "#" and "." not in name:
            out.append(name)
    return out


def honour(ns, name):
    """Remove from a stand-in's namespace (a module's globals() or a class)
    every public name the board's `name` lacks. Imported modules stay: the
    stand-in's own code needs them."""
    allowed = surface(name)
    if allowed is None:
        return
    cls = not isinstance(ns, dict)
    for k in list(ns.__dict__ if cls else ns):
        if k.startswith("_") or k in allowed:
            continue
        v = getattr(ns, k) if cls else ns[k]
        if cls:
            delattr(ns, k)
            continue
        if type(v) is not type(os):
            del ns[k]
    if not cls:
        for k in allowed:
            v = ns.get(k)
            if isinstance(v, type):
                honour(v, name + "." + k)


FF16 = b"\xff" * 16
_noise = None


def erased_reads_as_noise(addr, buf):
    """Flash encryption: software reads an encrypted partition through the
    XTS-AES decryption, so an erased 16-byte block (0xFF on the chip) reads back
    as the decryption of 0xFF..: noise, not 0xFF (ESP-IDF "Flash Encryption":
    encrypted partitions are decrypted on read). Code must not test for 0xFF to
    find erased space there. The stand-in keeps flash.bin in the clear and
    makes the noise from the address, keyed per chip."""
    global _noise
    if _noise is None:
        import cryptolib
        import hashlib

        _noise = cryptolib.aes(hashlib.sha256(b"flash-encryption" + espsim.flash().uid).digest(), 1)
    mv = memoryview(buf)
    blk = bytearray(16)
    for a in range(addr - addr % 16, addr + len(buf), 16):
        lo, hi = max(a, addr), min(a + 16, addr + len(buf))
        if mv[lo - addr:hi - addr] == FF16[:hi - lo]:
            struct.pack_into("<IIII", blk, 0, a, 0x4E4F4953, 0, 0)
            _noise.encrypt(blk, blk)
            mv[lo - addr:hi - addr] = blk[lo - a:hi - a]
