"""Simulated devices on the host: a device is a directory (see firmware/unix/espsim.py)."""
import json
import os
import secrets

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
        "efuse": {"nvs_key": secrets.token_bytes(32).hex(), "flash_encryption": bool(flash_encryption)},
        "flash_size": FLASH_SIZE,
        "partition_table_offset": offset,
        "partitions": parts,
    }
    flash = bytearray(b"\xff" * FLASH_SIZE)
    binary = t.to_binary()
    flash[offset:offset + len(binary)] = binary
    ota0 = next(p for p in parts if p["label"] == "ota_0")
    fw = stub_firmware()
    flash[ota0["offset"]:ota0["offset"] + len(fw)] = fw
    with open(os.path.join(path, "flash.bin"), "wb") as f:
        f.write(flash)
    with open(os.path.join(path, "device.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    for stale in ("reset", PMAP):
        try:
            os.unlink(os.path.join(path, stale))
        except FileNotFoundError:
            pass
    return cfg


PMAP = "crypt.map"  # firmware/unix/espboard.py: the programmed 16-byte blocks under flash encryption


def set_programmed(path, addr, n, programmed=True):
    """Host writes into flash.bin (factory flashing, as `esptool --encrypt`
    writes an encrypted partition; test set-up): mark the 16-byte blocks of
    [addr, addr+n) as programmed (they read back as written) or erased (an
    encrypted partition reads them as noise). Nothing to do without flash
    encryption."""
    cfg = load(path)
    if not cfg.get("efuse", {}).get("flash_encryption"):
        return
    b0, b1 = addr // 16, (addr + n + 15) // 16
    mpath = os.path.join(path, PMAP)
    if not os.path.exists(mpath):
        with open(mpath, "wb") as f:
            f.write(bytes(cfg["flash_size"] // 128))
    with open(mpath, "r+b") as f:
        f.seek(b0 // 8)
        bits = bytearray(f.read((b1 + 7) // 8 - b0 // 8))
        for b in range(b0, b1):
            i = b - b0 // 8 * 8
            if programmed:
                bits[i >> 3] |= 1 << (i & 7)
            else:
                bits[i >> 3] &= ~(1 << (i & 7))
        f.seek(b0 // 8)
        f.write(bits)


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
