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

# Flash encryption (ESP-IDF v5.5, components/spi_flash/esp_flash_api.c,
# esp_flash_write_encrypted, and docs "Flash Encryption"): software reads an
# encrypted partition through the XTS-AES (ESP32: AES-256 with a key tweaked
# per 32-byte row) decryption and writes it through the encryption. So
#   * an erased 16-byte block (0xFF on the chip) reads back as the decryption
#     of 0xFF..: noise, not 0xFF; code must not test for 0xFF there;
#   * a programmed block reads back as written, 0xFF included;
#   * a write must start 16-byte aligned (ESP_ERR_INVALID_ARG) and be a
#     multiple of 16 bytes long (ESP_ERR_INVALID_SIZE): esp32.Partition;
#   * a block whose ciphertext is only partly programmed (a torn write) or
#     programmed twice without an erase (NOR ANDs the two ciphertexts) decrypts
#     to noise as a whole.
# The stand-in keeps flash.bin in the clear, which the host tools read and
# write, and remembers in crypt.map which blocks were programmed since their
# erase (espsim.Flash.pmap): a block reads as noise when it is erased (all
# 0xFF and not programmed); a torn or rewritten block is stored as noise. The
# noise is made from the address, keyed per chip. On the ESP32 the driver
# writes a half row by re-encrypting the other half as read: the same
# ciphertext, a no-op on NOR, so the stand-in does not model it.


def _noise_block(a, blk, tag=0x4E4F4953):
    struct.pack_into("<IIII", blk, 0, a, tag, 0, 0)
    espsim.flash().noise.encrypt(blk, blk)


def _pmap_read(addr, out):
    """The map bytes from the one holding block addr // 16 on (enough for
    4 KiB) into out; returns that block's bit index in them."""
    m = espsim.flash().pmap
    m.seek(addr // 128)
    m.readinto(out)  # whole: a slice would be an allocation; the rest is unused
    return addr // 16 % 8


def erased_reads_as_noise(addr, buf):
    """Reads of an encrypted partition: every erased 16-byte block in buf
    (read from flash at addr) becomes the decryption of 0xFF: noise. In 4 KiB
    pieces through buffers made once (espsim.Flash.b16), and no allocation
    at all: the stand-in shares the app's heap, and garbage made here on
    every littlefs read would move where the boot's buffers fit."""
    fl = espsim.flash()
    blk, full, bits = fl.b16
    end = addr + len(buf)
    a = addr - addr % 16
    while a < end:
        top = min(end, a + 4096)
        i = _pmap_read(a, bits)
        while a < top:
            if not bits[i >> 3] & (1 << (i & 7)):
                fl.read(a, full)
                if full == FF16:
                    _noise_block(a, blk)
                    for x in range(max(a, addr), min(a + 16, end)):
                        buf[x - addr] = blk[x - a]
            i += 1
            a += 16


def forget(addr, n):
    """An erase of whole sectors: their blocks are erased again. Called before
    the erase, so a cut in between leaves them reading as noise at worst."""
    m = espsim.flash().pmap
    m.seek(addr // 128)
    z = bytes(32)  # one sector's bits
    for _ in range(n // espsim.SECTOR):
        m.write(z)


def write_encrypted(addr, data):
    """One write operation to an encrypted partition (aligned, checked by the
    caller): each 16-byte block lands as written if it was erased or already
    holds the same bytes; a torn block, or a different one over a programmed
    block, becomes noise. Power-cut and tear injection as espsim.Flash.write.
    In 4 KiB pieces, a few allocations per piece, none per block."""
    fl = espsim.flash()
    n = len(data)
    fl._check(addr, n)
    land = fl._op("W", addr, n)
    mv = memoryview(data)
    blk, old, bits = fl.b16
    garbled = fl.garbled
    stop = min(land + 15, n) // 16 * 16  # the blocks any of whose bytes land
    off = 0
    while off < stop:
        a0 = addr + off
        top = min(off + 4096, stop)
        i0 = i = _pmap_read(a0, bits)
        for o in range(off, top, 16):
            # A block programmed before (its bit set, or host data in it)
            # takes only the same bytes again; a torn one is noise.
            fl.read(addr + o, old)
            g = land - o < 16
            if not g and (bits[i >> 3] & (1 << (i & 7)) or old != FF16):
                g = old != mv[o:o + 16]
            garbled[(o - off) >> 4] = g
            bits[i >> 3] |= 1 << (i & 7)
            i += 1
        fl.f.seek(a0)
        fl.f.write(mv[off:top])
        for o in range(off, top, 16):
            if garbled[(o - off) >> 4]:
                _noise_block(addr + o, blk, 0x54524E20 ^ fl.ops)
                fl.f.seek(addr + o)
                fl.f.write(blk)
        fl.pmap.seek(a0 // 128)
        fl.pmap.write(memoryview(bits)[:(i0 + (top - off) // 16 + 7) // 8])
        off = top
    if land < n:
        espsim._die()
