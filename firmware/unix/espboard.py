# The board as upstream builds it, for the stand-ins on the unix port: the
# chip (ESP32 or ESP32-S3), the port profile's surface of each board module
# (firmware/profile/<chip>.surface, from `ictl firmware profile`), and what
# flash encryption makes of an encrypted partition's erased flash. Apart from
# espsim so each compiles within a small heap.
import os
import json
import struct
import micropython
from micropython import const

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


# Flash encryption (ESP-IDF v5.5, components/spi_flash/esp_flash_api.c,
# esp_flash_write_encrypted, and docs "Flash Encryption"): the flash holds
# ciphertext; software reads an encrypted partition through the decryption
# in the flash cache and writes it through the encryption. So
#   * an erased 16-byte block (0xFF on the chip) reads back as the decryption
#     of 0xFF..: noise, not 0xFF; code must not test for 0xFF there;
#   * a programmed block reads back as written, 0xFF included;
#   * a write must start 16-byte aligned (ESP_ERR_INVALID_ARG) and be a
#     multiple of 16 bytes long (ESP_ERR_INVALID_SIZE): esp32.Partition;
#   * a block whose ciphertext is only partly programmed (a torn write) or
#     programmed twice without an erase (NOR ANDs the two ciphertexts) decrypts
#     to noise as a whole.
# The stand-in does what the chip does: flash.bin holds the ciphertext, and
# espsim.Flash.read/write pass the ranges of encrypted partitions through
# Crypt. The cipher is AES-256 on each 16-byte block, tweaked by its address:
# c = E_k(p ^ M) ^ M, M = m ^ the block number (a 16-byte mask m of the key), as
# the ESP32's own tweaks its AES-256 key per 32-byte row and the S3's
# XTS-AES tweaks the block. Not the chip's cipher, but every property above
# follows from it and from the NOR flash under it, with nothing modelled
# apart: an erased block decrypts to noise, a torn or doubly programmed
# block's ciphertext decrypts to noise as a whole, and the same plaintext
# differs on flash from block to block. The keys are the simulated eFuse's
# (device.json "flash_key"); the host tools use the same cipher
# (ictl.sim.device.read_flash/write_flash).
#
# On a chip the flash cache does this and costs the app's heap nothing. The
# stand-in shares the app's heap on the unix port, so it costs as little as
# it can: its two AES objects (encryption and decryption: a cryptolib.aes
# does one or the other) and a 256-byte and a 64-byte buffer are made once,
# at start-up, before the app's heap is set apart (start.py), and a read or
# a write allocates nothing (viper loops over whole buffers, no slices).

_P = const(256)  # bytes per piece: a multiple of 64, a divisor of the sector
_A = const(64)  # bytes ANDed into flash at a time


@micropython.viper
def _mask(b: ptr8, n: int, blk: int, m: ptr8):
    # b[:n] ^= M of each block from number blk on.
    i = 0
    while i < n:
        j = i & 15
        v = m[j]
        if j < 4:
            v = v ^ ((blk >> (j << 3)) & 0xFF)
        b[i] = b[i] ^ v
        if j == 15:
            blk += 1
        i += 1


@micropython.viper
def _copy(d: ptr8, do: int, s: ptr8, so: int, n: int):
    i = 0
    while i < n:
        d[do + i] = s[so + i]
        i += 1


@micropython.viper
def _and(d: ptr8, do: int, s: ptr8, so: int, n: int):
    i = 0
    while i < n:
        d[do + i] = d[do + i] & s[so + i]
        i += 1


def keys(efuse, uid):
    """The flash encryption key and mask (k, m) from the simulated eFuse (or,
    for a device made before it held them, derived from the unique id)."""
    import hashlib
    import binascii

    k = efuse.get("flash_key")
    if k:
        k = binascii.unhexlify(k)
        return k[:32], k[32:48]
    return (hashlib.sha256(b"flash-encryption" + uid).digest(), hashlib.sha256(b"flash-tweak" + uid).digest()[:16])


class Crypt:
    """The flash cache's decryption and the encrypted write of one chip."""

    def __init__(self, fl, k, m):
        import cryptolib

        self.fl = fl
        self.enc = cryptolib.aes(k, 1)  # ECB
        self.dec = cryptolib.aes(k, 1)
        self.m = m
        self.sec = bytearray(_P)
        self.old = bytearray(_A)

    def read(self, addr, buf):
        """Plaintext of [addr, addr + len(buf)) into buf (a bytearray or a
        memoryview), a piece at a time."""
        f = self.fl.f
        sec = self.sec
        end = addr + len(buf)
        a = addr - addr % _P
        while a < end:
            f.seek(a)
            f.readinto(sec)
            _mask(sec, _P, a >> 4, self.m)
            self.dec.decrypt(sec, sec)
            _mask(sec, _P, a >> 4, self.m)
            lo = max(a, addr)
            _copy(buf, lo - addr, sec, lo - a, min(a + _P, end) - lo)
            a += _P

    def write(self, addr, data, land):
        """One write operation (aligned: checked by the caller) through the
        encryption: the ciphertext of data ANDed into flash, its first `land`
        bytes only (a cut or a torn write: see espsim.Flash.write)."""
        f = self.fl.f
        sec, old = self.sec, self.old
        end = addr + len(data)
        pos = addr
        while pos < end and pos - addr < land:
            a = pos - pos % _P
            off = pos - a
            m = min(a + _P, end) - pos
            _copy(sec, off, data, pos - addr, m)
            _mask(sec, _P, a >> 4, self.m)
            self.enc.encrypt(sec, sec)  # the rest of the piece is left over; not written
            _mask(sec, _P, a >> 4, self.m)
            k = min(m, land - (pos - addr))
            o = off - off % _A
            while o < off + k:
                # NOR: the stored byte becomes old AND new.
                f.seek(a + o)
                f.readinto(old)
                lo = max(o, off)
                _and(old, lo - o, sec, lo, min(o + _A, off + k) - lo)
                f.seek(a + o)
                f.write(old)
                o += _A
            pos += m
