"""Simulated devices on the host: a device is a directory (see firmware/unix/espsim.py)."""
import hashlib
import json
import os
import secrets
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ictl import ToolError, firmware

FLASH_SIZE = firmware.FLASH_SIZE
DEFAULT_TABLE = firmware.TABLE


def partitions(table):
    """The partitions of an ESP-IDF table, as device.json lists them for the host tools."""
    return [{"label": p.name, "type": p.type, "subtype": p.subtype, "offset": p.offset, "size": p.size} for p in table]


def stub_firmware():
    """A stand-in for the MicroPython firmware in an OTA slot: an ESP app image
    header (magic 0xE9) is what the simulated bootloader checks."""
    return b"\xe9" + b"\x00" * 23 + b"IRONCLAD-SIM-FIRMWARE"


def create(path, hwid="esp32-sim", table=DEFAULT_TABLE, force=False, chip="esp32", flash_encryption=True):
    """Make a fresh device as `ictl firmware flash` leaves a board: the binary
    partition table at CONFIG_PARTITION_TABLE_OFFSET (where the simulated
    bootloader reads it), firmware in ota_0, the rest erased; a random unique id.
    flash_encryption: the eFuse of a production board (firmware/sdkconfig.production,
    release mode), on by default: every simulated board stands for a field
    board (`ictl device create`, `ictl run`, the fleet, the telemetry rig, the
    soaks and labs) unless a test is about a development board and passes
    False, saying why. The stand-in's bookkeeping is made before the app's
    heap is capped and allocates nothing per block (firmware/unix/espboard.py)."""
    if os.path.exists(os.path.join(path, "device.json")) and not force:
        raise ToolError("%s already holds a device: pass --force to replace it" % path)
    t = firmware.partition_table(table)  # ESP-IDF's own checks: overlaps, alignment, room for the table, fit
    parts = partitions(t)
    offset = firmware.table_offset()
    os.makedirs(path, exist_ok=True)
    cfg = {
        "format": 2,
        "hwid": hwid,
        "chip": chip,  # the port profile the stand-ins hold to (firmware/profile/<chip>.surface)
        "unique_id": secrets.token_bytes(6).hex(),
        # The simulated eFuse (read-protected on a chip): the NVS encryption key.
        # flash_key: the flash encryption key (AES-256) and its 16-byte address mask (firmware/unix/espboard.py).
        "efuse": {"nvs_key": secrets.token_bytes(32).hex(), "flash_encryption": bool(flash_encryption),
                  "flash_key": secrets.token_bytes(48).hex()},
        "flash_size": FLASH_SIZE,
        "partition_table_offset": offset,
        "partitions": parts,
    }
    flash = bytearray(b"\xff" * FLASH_SIZE)
    binary = t.to_binary()
    flash[offset:offset + len(binary)] = binary
    with open(os.path.join(path, "flash.bin"), "wb") as f:
        f.write(flash)
    with open(os.path.join(path, "device.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    ota0 = next(p for p in parts if p["label"] == "ota_0")
    write_flash(path, ota0["offset"], stub_firmware())  # encrypted on a production board
    for stale in ("reset", "crypt.map"):  # crypt.map: an older stand-in's
        try:
            os.unlink(os.path.join(path, stale))
        except FileNotFoundError:
            pass
    return cfg


# Flash encryption on the host: flash.bin holds what the chip's flash holds,
# the ciphertext of every encrypted partition (firmware/unix/espboard.py: XEX
# on 16-byte blocks with the simulated eFuse's keys). write_flash writes as
# `esptool --encrypt` does; read_flash reads what software on the chip reads
# through the flash cache (a simulation's privilege: the host holds the key).

def _keys(cfg):
    efuse = cfg.get("efuse", {})
    if efuse.get("flash_key"):
        k = bytes.fromhex(efuse["flash_key"])
        return k[:32], k[32:48]
    uid = bytes.fromhex(cfg["unique_id"])
    return hashlib.sha256(b"flash-encryption" + uid).digest(), hashlib.sha256(b"flash-tweak" + uid).digest()[:16]


def encrypted_ranges(path, cfg=None):
    """[(start, end)] of the partitions flash encryption covers on this device
    (none without it): app partitions, otadata, nvs_keys and flagged ones, as
    espsim reads the binary table."""
    cfg = cfg or load(path)
    if not cfg.get("efuse", {}).get("flash_encryption"):
        return []
    from esp_idf_defs import partitions as gen  # ESP-IDF's gen_esp32part, as ictl.firmware reads tables

    with open(os.path.join(path, "flash.bin"), "rb") as f:
        f.seek(cfg["partition_table_offset"])
        table = gen.PartitionTable.from_binary(f.read(gen.MAX_PARTITION_LENGTH))
    auto = {(gen.DATA_TYPE, gen.SUBTYPES[gen.DATA_TYPE]["ota"]), (gen.DATA_TYPE, gen.SUBTYPES[gen.DATA_TYPE]["nvs_keys"])}
    return [(p.offset, p.offset + p.size) for p in table
            if p.encrypted or p.type == gen.APP_TYPE or (p.type, p.subtype) in auto]


def _crypt(cfg, addr, data, encrypt):
    # AES-256 on each 16-byte block, tweaked by its address (espboard.Crypt):
    # c = E_k(p ^ M) ^ M, M = m ^ the block number (little-endian, first 4 bytes).
    k, m = _keys(cfg)
    n = len(data)
    b0 = addr >> 4
    idx = struct.pack("<%dI" % (4 * (n // 16)), *[v for i in range(n // 16) for v in ((b0 + i) & 0xFFFFFFFF, 0, 0, 0)])
    mask = int.from_bytes(m * (n // 16), "little") ^ int.from_bytes(idx, "little")
    c = Cipher(algorithms.AES(k), modes.ECB())
    x = (int.from_bytes(data, "little") ^ mask).to_bytes(n, "little")
    y = (c.encryptor() if encrypt else c.decryptor()).update(x)
    return (int.from_bytes(y, "little") ^ mask).to_bytes(n, "little")


def _overlaps(path, cfg, addr, n):
    for lo, hi in encrypted_ranges(path, cfg):
        a, b = max(lo, addr), min(hi, addr + n)
        if a < b:
            yield a, b


def read_flash(path, addr, n):
    """n bytes at addr as software on the chip reads them: an encrypted
    partition's erased blocks read as noise, its programmed ones as written."""
    cfg = load(path)
    with open(os.path.join(path, "flash.bin"), "rb") as f:
        f.seek(addr)
        out = bytearray(f.read(n))
        for a, b in _overlaps(path, cfg, addr, n):
            a0, b0 = a - a % 16, b + -b % 16
            f.seek(a0)
            plain = _crypt(cfg, a0, f.read(b0 - a0), False)
            out[a - addr:b - addr] = plain[a - a0:b - a0]
    return bytes(out)


def write_flash(path, addr, data):
    """Host writes into flash.bin (factory flashing, test set-up), as
    esptool writes a board: over whatever was there (esptool erases first),
    and into an encrypted partition encrypted (`esptool --encrypt`: 16-byte
    aligned, the last block padded with 0xFF)."""
    cfg = load(path)
    data = bytes(data)
    out = bytearray(data)
    for a, b in _overlaps(path, cfg, addr, len(data)):
        if a % 16:
            raise ToolError("an encrypted write must start 16-byte aligned (0x%x)" % a)
        chunk = data[a - addr:b - addr]
        chunk += b"\xff" * (-len(chunk) % 16)
        enc = _crypt(cfg, a, chunk, True)
        out[a - addr:a - addr + len(enc)] = enc
    with open(os.path.join(path, "flash.bin"), "r+b") as f:
        f.seek(addr)
        f.write(out)


def load(path):
    """The device's config, or a one-line error saying what to do."""
    try:
        with open(os.path.join(path, "device.json")) as f:
            cfg = json.load(f)
        size = os.path.getsize(os.path.join(path, "flash.bin"))
    except FileNotFoundError:
        raise ToolError("no device at %s: create one with `ictl device create %s`" % (path, path))
    except (ValueError, OSError) as e:
        raise ToolError("device at %s is corrupt (%s): recreate it with `ictl device create --force %s`" % (path, e, path))
    if not isinstance(cfg, dict) or size != cfg.get("flash_size") or "partitions" not in cfg:
        raise ToolError("device at %s is corrupt: recreate it with `ictl device create --force %s`" % (path, path))
    return cfg
