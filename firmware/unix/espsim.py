# The simulated ESP32 behind the stand-in `esp32` and `machine` modules on the
# unix port. One device is one directory on the host:
#
#   device.json  identity, eFuse keys, where the partition table is (written by `ictl device create`)
#   flash.bin    the whole SPI flash, byte for byte: the binary partition table at
#                CONFIG_PARTITION_TABLE_OFFSET, partitions at their offsets
#   reset        why the last run ended, for machine.reset_cause()
#
# Flash behaves like NOR flash: erasing a 4 KiB sector sets it to 0xFF, and a
# write can only clear bits (the stored byte becomes old AND new), so code that
# forgets to erase corrupts data exactly as it would on a board.
#
# Fault injection (environment variable ESPSIM_FAULT, read at start-up):
#   cut:N     power is cut just before flash operation N (1-based)
#   tear:N:K  operation N is torn: only its first K bytes land, then power is cut
# A flash operation is one sector erase or one write call. Power loss and
# machine.reset() end the process at once, with SIGKILL: no `finally`, no
# atexit, nothing after it runs, as on the chip. The next boot is a new process
# on the same directory. ESPSIM_TRACE=path appends one line per operation.
# ESPSIM_FLASH_TIMING: operations take a board's time (flashtime.py).
import os
import json
import struct
import binascii
import hashlib
from micropython import const

SECTOR = const(4096)
_CHUNK = const(256)  # small: the flash driver is not the app's heap

_ERR_INVALID_SIZE = const(-260)  # ESP_ERR_INVALID_SIZE, as check_esp_err raises it
_ERR_INVALID_ARG = const(22)  # EINVAL

# The binary partition table (ESP-IDF esp_partition_info_t): 32-byte entries
# {magic 0x50AA, type, subtype, offset, size, label[16], flags}, an optional MD5
# entry over the entries before it, then an erased entry that ends the table.
_ENTRY = "<HBBII16sI"
_MAGIC = const(0x50AA)
_MAGIC_MD5 = const(0xEBEB)
_MAX_ENTRIES = const(96)  # ESP_PARTITION_TABLE_MAX_ENTRIES: 0xC00 bytes

_flash = None


class SimError(Exception):
    """The device directory is missing or corrupt: a set-up error, not a device error."""


def devdir():
    return os.getenv("ESPSIM_DIR") or "device"


def _die():
    # Power is gone: kill our own process (sh's parent) with SIGKILL.
    os.system("kill -9 $PPID")
    while True:  # pragma: no cover - never reached
        pass


class Flash:
    def __init__(self, path):
        try:
            with open(path + "/device.json") as f:
                cfg = json.load(f)
            self.size = int(cfg["flash_size"])
            self.table_at = int(cfg["partition_table_offset"])
            self.uid = binascii.unhexlify(cfg["unique_id"])
            # The simulated eFuse: keys the hardware keeps from software (esp32.NVS).
            self.efuse = cfg.get("efuse") or {}
            # Flash encryption on (a production board): $ESPSIM_FLASH_ENCRYPTION=1
            # or the simulated eFuse "flash_encryption", which `ictl device
            # create` sets unless --development.
            self.crypt = os.getenv("ESPSIM_FLASH_ENCRYPTION") == "1" or bool(self.efuse.get("flash_encryption"))
            self.f = open(path + "/flash.bin", "r+b")
            if self.crypt:
                # Made once, now: long-lived objects made later, mid-boot, would
                # split the app's heap (the stand-in shares it). espboard.Crypt.
                import espboard

                self.cr = espboard.Crypt(self, *espboard.keys(self.efuse, self.uid))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SimError("device directory %r is missing or corrupt (%r): create it with `ictl device create`" % (path, e))
        self.f.seek(0, 2)
        if self.f.tell() != self.size:
            raise SimError("device directory %r: flash.bin is not %d bytes: recreate it with `ictl device create`" % (path, self.size))
        self.path = path
        self.enc = ()  # the partition table is read in the clear (it is written so here)
        self.parts = self._read_table()
        # Under flash encryption: the ranges of the encrypted partitions, which
        # read and write go through espboard.Crypt for.
        self.enc = tuple((p["offset"], p["offset"] + p["size"]) for p in self.parts if p["encrypted"]) if self.crypt else ()
        self.ops = 0
        self.cut_at = 0
        self.tear_bytes = -1
        fault = os.getenv("ESPSIM_FAULT")
        if fault:
            p = fault.split(":")
            self.cut_at = int(p[1])
            if p[0] == "tear":
                self.tear_bytes = int(p[2])
            elif p[0] != "cut":
                raise SimError("ESPSIM_FAULT must be cut:N or tear:N:K, not %r" % fault)
        tr = os.getenv("ESPSIM_TRACE")
        self.trace = open(tr, "a") if tr else None
        self.ff = b"\xff" * _CHUNK
        self.buf = bytearray(_CHUNK)
        # The reset record says why this boot happened. machine.reset() writes
        # the cause for the next boot; a boot writes "BOOT:<cause>", so a run
        # that ends with no record of its own (a power cut) reads as PWRON next
        # time. A soft reboot (Ctrl-D: MicroPython restarts, the chip does not)
        # reads SOFT, as upstream's machine_deinit() sets is_soft_reset for
        # every later soft boot (ports/esp32/modmachine.c, v1.28.0), and a
        # later hard reset or power cut reads as its own cause again. Fixed
        # width: the file cannot be reopened once the root filesystem is the
        # device's own.
        try:
            with open(path + "/reset", "rb") as f:
                rec = f.read().decode().strip()
        except OSError:
            rec = ""
        if os.getenv("ESPSIM_SOFT_REBOOT"):
            cause = "SOFT"
        elif os.getenv("ESPSIM_SAME_BOOT") and rec.startswith("BOOT:"):
            # The relay continues a boot the unix port crashed where a board
            # would not (ictl.sim.board, _device_ended): no reset happened.
            cause = rec[5:]
        else:
            cause = "PWRON" if (not rec or rec.startswith("BOOT:")) else rec
        self.reset_cause = cause
        self.reset_file = open(path + "/reset", "wb")
        self.set_reset_cause("BOOT:" + cause)

    def _op(self, kind, addr, n):
        """Count one flash operation; return how many of its n bytes land."""
        self.ops += 1
        if self.trace:
            self.trace.write("%d %s %x %d\n" % (self.ops, kind, addr, n))
        if self.ops == self.cut_at:
            if self.tear_bytes < 0:
                _die()
            return min(self.tear_bytes, n)
        return n

    def _check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise OSError(_ERR_INVALID_SIZE, "ESP_ERR_INVALID_SIZE")

    def _encrypted(self, addr):
        for lo, hi in self.enc:
            if lo <= addr < hi:
                return True
        return False

    def read(self, addr, buf):
        """What software reads: an encrypted partition's plaintext, through
        the flash cache's decryption (espboard.Crypt)."""
        self._check(addr, len(buf))
        if self.enc and self._encrypted(addr):
            self.cr.read(addr, buf)
            return
        self.f.seek(addr)
        self.f.readinto(buf)

    def erase(self, addr, n):
        """Erase whole sectors; each sector is one operation."""
        if addr % SECTOR or n % SECTOR:
            raise OSError(_ERR_INVALID_ARG, "erase not sector aligned")
        self._check(addr, n)
        for a in range(addr, addr + n, SECTOR):
            land = self._op("E", a, SECTOR)
            self.f.seek(a)
            while land > 0:
                k = min(land, _CHUNK)
                self.f.write(self.ff if k == _CHUNK else self.ff[:k])
                land -= k
            if self.f.tell() < a + SECTOR:
                _die()

    def write(self, addr, data):
        """One write operation: each stored byte becomes old AND new. In an
        encrypted partition the bytes stored are the ciphertext's
        (espboard.Crypt; the caller checks the 16-byte alignment)."""
        n = len(data)
        self._check(addr, n)
        land = self._op("W", addr, n)
        if self.enc and self._encrypted(addr):
            self.cr.write(addr, data, land)
            if land < n:
                _die()
            return
        mv = memoryview(data)
        buf = self.buf
        done = 0
        while done < land:
            k = min(_CHUNK, land - done)
            old = buf if k == _CHUNK else memoryview(buf)[:k]
            self.f.seek(addr + done)
            self.f.readinto(old)
            new = mv[done : done + k]
            if (buf != self.ff) if k == _CHUNK else (buf[:k] != self.ff[:k]):
                # AND in C through big ints, not a Python loop per byte.
                v = int.from_bytes(old, "big") & int.from_bytes(new, "big")
                new = v.to_bytes(k, "big")
            self.f.seek(addr + done)
            self.f.write(new)
            done += k
        if land < n:
            _die()

    def _read_table(self):
        """The partition table as the ESP-IDF bootloader reads it from flash
        (esp_partition_table_verify): a table that is erased, torn or corrupt
        stops the boot, as it does on the chip."""
        parts = []
        md5 = hashlib.md5()
        md5_seen = False
        e = bytearray(32)
        for i in range(_MAX_ENTRIES):
            self.read(self.table_at + 32 * i, e)
            magic, typ, sub, off, size, label, flags = struct.unpack(_ENTRY, e)
            if magic == _MAGIC and not md5_seen:
                if off + size > self.size:
                    raise self._bad_table("partition %d exceeds the flash" % i)
                md5.update(e)
                # Encrypted under flash encryption: app partitions, otadata
                # (data/ota) and nvs_keys always, others with flag bit 0.
                enc = bool(flags & 1) or typ == 0 or (typ == 1 and sub in (0x00, 0x04))
                parts.append({"label": label.split(b"\0")[0].decode(), "type": typ, "subtype": sub,
                              "offset": off, "size": size, "encrypted": enc})
            elif magic == _MAGIC_MD5 and not md5_seen:
                if e[16:] != md5.digest():
                    raise self._bad_table("incorrect MD5 checksum")
                md5_seen = True
            elif magic == 0xFFFF and typ == 0xFF and sub == 0xFF:
                if not parts:
                    break
                return parts
            else:
                raise self._bad_table("entry %d is invalid (magic 0x%04x)" % (i, magic))
        raise self._bad_table("no partition table" if not parts else "no terminating entry")

    def _bad_table(self, why):
        return SimError("device directory %r: no valid partition table at 0x%x (%s): recreate it with `ictl device create --force`"
                       % (self.path, self.table_at, why))

    def set_reset_cause(self, cause):
        self.reset_file.seek(0)
        self.reset_file.write(("%-16s" % cause).encode())

    def partition(self, label):
        for p in self.parts:
            if p["label"] == label:
                return p
        return None


def flash():
    """The device's flash, opened on first use from $ESPSIM_DIR."""
    global _flash
    if _flash is None:
        _flash = Flash(devdir())
    return _flash


def reset(cause):
    """End the process as a reset does; the next boot reports `cause`."""
    f = flash()
    f.set_reset_cause(cause)
    _die()
