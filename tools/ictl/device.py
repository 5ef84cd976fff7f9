"""Simulated devices on the host: a device is a directory (see firmware/unix/espsim.py)."""
import json
import os
import secrets

from ictl import ROOT, ToolError

FLASH_SIZE = 4 * 1024 * 1024
DEFAULT_TABLE = os.path.join(ROOT, "firmware", "partitions-4MiB.csv")
SECTOR = 4096

_TYPES = {"app": 0, "data": 1}
_SUBTYPES = {
    0: {"factory": 0x00, "test": 0x20, **{"ota_%d" % i: 0x10 + i for i in range(16)}},
    1: {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04,
        "efuse": 0x05, "undefined": 0x06, "esphttpd": 0x80, "fat": 0x81, "spiffs": 0x82,
        "littlefs": 0x83},
}


def _num(s):
    s = s.strip()
    mult = 1
    if s[-1:] in "KkMm":
        mult = 1024 if s[-1] in "Kk" else 1024 * 1024
        s = s[:-1]
    return int(s, 0) * mult


def parse_partition_table(path=DEFAULT_TABLE):
    """Parse an ESP-IDF partition CSV (explicit offsets) into a list of dicts."""
    parts = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            cols = [c.strip() for c in line.split(",")]
            if len(cols) < 5:
                raise ToolError("%s:%d: expected name, type, subtype, offset, size" % (path, lineno))
            name, typ, sub, off, size = cols[:5]
            t = _TYPES.get(typ)
            t = _num(typ) if t is None else t
            st = _SUBTYPES.get(t, {}).get(sub)
            st = _num(sub) if st is None else st
            parts.append({"label": name, "type": t, "subtype": st, "offset": _num(off), "size": _num(size)})
    return parts


def check_table(parts, flash_size=FLASH_SIZE):
    """Overlaps, alignment and fit: what the ESP-IDF tooling also refuses."""
    end = 0
    for p in sorted(parts, key=lambda p: p["offset"]):
        align = 0x10000 if p["type"] == 0 else SECTOR
        if p["offset"] % align:
            raise ToolError("partition %s at 0x%x is not %d-aligned" % (p["label"], p["offset"], align))
        if p["offset"] < end:
            raise ToolError("partition %s overlaps the one before it" % p["label"])
        end = p["offset"] + p["size"]
    if end > flash_size:
        raise ToolError("partition table needs 0x%x bytes, flash has 0x%x" % (end, flash_size))


def stub_firmware():
    """A stand-in for the MicroPython firmware in an OTA slot: an ESP app image
    header (magic 0xE9) is what the simulated bootloader checks."""
    return b"\xe9" + b"\x00" * 23 + b"IRONCLAD-SIM-FIRMWARE"


def create(path, hwid="esp32-sim", table=DEFAULT_TABLE, force=False):
    """Make a fresh device: erased flash, firmware in ota_0, a random unique id."""
    if os.path.exists(os.path.join(path, "device.json")) and not force:
        raise ToolError("%s already holds a device: pass --force to replace it" % path)
    parts = parse_partition_table(table)
    check_table(parts)
    os.makedirs(path, exist_ok=True)
    cfg = {
        "format": 1,
        "hwid": hwid,
        "unique_id": secrets.token_bytes(6).hex(),
        # The simulated eFuse (read-protected on a chip): the NVS encryption key.
        "efuse": {"nvs_key": secrets.token_bytes(32).hex()},
        "flash_size": FLASH_SIZE,
        "partitions": parts,
    }
    flash = bytearray(b"\xff" * FLASH_SIZE)
    ota0 = next(p for p in parts if p["label"] == "ota_0")
    fw = stub_firmware()
    flash[ota0["offset"]:ota0["offset"] + len(fw)] = fw
    with open(os.path.join(path, "flash.bin"), "wb") as f:
        f.write(flash)
    with open(os.path.join(path, "device.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    for stale in ("reset",):
        try:
            os.unlink(os.path.join(path, stale))
        except FileNotFoundError:
            pass
    return cfg


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
