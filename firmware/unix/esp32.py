# Stand-in for MicroPython's `esp32` module on the unix port: Partition and NVS
# with the names, signatures and errors the ESP32 port has, over the simulated
# flash in espsim (NOR semantics, fault injection, state in the device directory).
#
# The app-rollback logic follows the ESP-IDF bootloader with
# CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE: otadata holds two entries (one per
# sector) {ota_seq u32, seq_label[20], ota_state u32, crc u32}; the valid entry
# with the highest sequence picks the slot (seq-1) % slots; a NEW image boots
# once as PENDING_VERIFY, and a PENDING_VERIFY image that boots again without
# mark_app_valid_cancel_rollback() is ABORTED and the other slot boots.
import struct
import binascii
import cryptolib
from micropython import const

import espsim
import espboard

_TYPE_APP = const(0)
_TYPE_DATA = const(1)
_SUB_OTA0 = const(0x10)
_SUB_DATA_OTA = const(0)
_SUB_NVS = const(2)

_ST_NEW = const(0)
_ST_PENDING = const(1)
_ST_VALID = const(2)
_ST_INVALID = const(3)
_ST_ABORTED = const(4)
_ST_UNDEFINED = const(0xFFFFFFFF)
_OTA_ENTRY = "<I20sII"  # 32 bytes, as esp_ota_select_entry_t

_ERR_NOT_FOUND = const(-4354)  # ESP_ERR_NVS_NOT_FOUND
_ERR_TYPE_MISMATCH = const(-4355)  # ESP_ERR_NVS_TYPE_MISMATCH
_ERR_INVALID_LENGTH = const(-4364)  # ESP_ERR_NVS_INVALID_LENGTH
_ERR_KEY_TOO_LONG = const(-4361)  # ESP_ERR_NVS_KEY_TOO_LONG
_ERR_NOT_ENOUGH_SPACE = const(-4357)  # ESP_ERR_NVS_NOT_ENOUGH_SPACE
_ERR_OTA_VALIDATE = const(-5379)  # ESP_ERR_OTA_VALIDATE_FAILED
_ERR_INVALID_ARG = const(-258)  # ESP_ERR_INVALID_ARG

_running = None  # label of the app partition the (simulated) bootloader chose


def _seq_crc(seq):
    # crc32_le(UINT32_MAX, &ota_seq, 4) as ESP-IDF computes it over the sequence only.
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = _TYPE_APP
    TYPE_DATA = _TYPE_DATA

    def __init__(self, id, block_size=4096):
        if id == Partition.RUNNING:
            id = _boot()
        elif id == Partition.BOOT:
            id = _next_boot_label()
        p = espsim.flash().partition(id)
        if p is None:
            raise ValueError("partition not found")
        self._p = p
        self._bs = block_size

    @staticmethod
    def find(type=_TYPE_APP, subtype=0xFF, label=None, block_size=4096):
        out = []
        for p in espsim.flash().parts:
            if p["type"] == type and (subtype == 0xFF or p["subtype"] == subtype) and (label is None or p["label"] == label):
                out.append(Partition(p["label"], block_size))
        return out

    def _enc(self):
        # esp_partition_t.encrypted: the partition is encrypted on this chip
        # (flash encryption on, and an app, otadata, nvs_keys or flagged one).
        return espsim.flash().crypt and self._p.get("encrypted", False)

    def info(self):
        p = self._p
        return (p["type"], p["subtype"], p["offset"], p["size"], p["label"], self._enc())

    def __repr__(self):
        p = self._p
        return "<Partition type=%d, subtype=%d, address=%d, size=%d, label=%s, encrypted=%d>" % (
            p["type"], p["subtype"], p["offset"], p["size"], p["label"], self._enc())

    def __eq__(self, other):
        return isinstance(other, Partition) and other._p["label"] == self._p["label"]

    def _range(self, off, n):
        # Bounds as esp_partition_read/write check them: never past the partition.
        if off < 0 or off + n > self._p["size"]:
            raise OSError(-260, "ESP_ERR_INVALID_SIZE")
        return self._p["offset"] + off

    def readblocks(self, block_num, buf, offset=0):
        a = self._range(block_num * self._bs + offset, len(buf))
        espsim.flash().read(a, buf)  # decrypted in an encrypted partition (espboard.Crypt)

    def writeblocks(self, block_num, buf, offset=None):
        fl = espsim.flash()
        if self._enc():
            # esp_partition_write -> esp_flash_write_encrypted: the address must
            # be 16-byte aligned (ESP_ERR_INVALID_ARG) and the length a multiple
            # of 16 (ESP_ERR_INVALID_SIZE), as XTS-AES works on 16-byte blocks.
            if (block_num * self._bs + (offset or 0)) % 16:
                raise OSError(_ERR_INVALID_ARG, "ESP_ERR_INVALID_ARG")
            if len(buf) % 16:
                raise OSError(-260, "ESP_ERR_INVALID_SIZE")
        write = fl.write  # through the encryption in an encrypted partition (espboard.Crypt)
        if offset is None:
            # The 3-argument form erases the blocks it covers first, as the port does.
            off = block_num * self._bs
            n = (len(buf) + espsim.SECTOR - 1) // espsim.SECTOR * espsim.SECTOR
            self._erase(self._range(off, n), n)
            write(self._range(off, len(buf)), buf)
        else:
            write(self._range(block_num * self._bs + offset, len(buf)), buf)

    def _erase(self, a, n):
        espsim.flash().erase(a, n)

    def ioctl(self, cmd, arg):
        if cmd == 4:  # BP_IOCTL_SEC_COUNT
            return self._p["size"] // self._bs
        if cmd == 5:  # BP_IOCTL_SEC_SIZE
            return self._bs
        if cmd == 6:  # BP_IOCTL_SEC_ERASE
            self._erase(self._range(arg * self._bs, self._bs), self._bs)
            return 0
        if cmd in (1, 2, 3):  # INIT, DEINIT, SYNC
            return 0
        return None

    def set_boot(self):
        # esp_ota_set_boot_partition (ESP-IDF v5.5 app_update/esp_ota_ops.c)
        # verifies the image first (esp_image_verify: with Secure Boot V2
        # its signature, with anti-rollback its secure_version) and the port
        # raises its error as OSError (check_esp_err, upstream
        # ports/esp32/esp32_partition.c). The stand-in checks only the magic
        # byte; fault injection ESPSIM_SET_BOOT_FAIL=1 refuses any image as
        # the verification would (ESP_ERR_OTA_VALIDATE_FAILED), before
        # otadata is touched.
        p = self._p
        if p["type"] != _TYPE_APP or not (_SUB_OTA0 <= p["subtype"] < _SUB_OTA0 + 16):
            raise OSError(_ERR_INVALID_ARG, "ESP_ERR_INVALID_ARG")
        # espsim's os: the unix port's, which has getenv (the os the device
        # code imports after start-up is the board's, which has not).
        if not _app_valid(p) or espsim.os.getenv("ESPSIM_SET_BOOT_FAIL"):
            raise OSError(_ERR_OTA_VALIDATE, "ESP_ERR_OTA_VALIDATE_FAILED")
        ent = _ota_entries()
        n = len(_ota_slots())
        top = max([e[0] for e in ent if e is not None] or [0])
        seq = top + 1
        while (seq - 1) % n != p["subtype"] - _SUB_OTA0:
            seq += 1
        # Write the sector not holding the newest entry, so a cut keeps the old one.
        newest = 0 if (ent[0] and (not ent[1] or ent[0][0] >= ent[1][0])) else 1
        _write_ota(1 - newest if ent[newest] else newest, seq, _ST_NEW)

    def get_next_update(self):
        slots = _ota_slots()
        run = self._p["label"]
        for i, s in enumerate(slots):
            if s["label"] == run:
                return Partition(slots[(i + 1) % len(slots)]["label"], self._bs)
        return Partition(slots[0]["label"], self._bs)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        label = _boot()
        ent = _ota_entries()
        for i, e in enumerate(ent):
            if e and _slot_label(e[0]) == label and e[1] == _ST_PENDING:
                _write_ota(i, e[0], _ST_VALID)


def _ota_slots():
    return sorted([p for p in espsim.flash().parts if p["type"] == _TYPE_APP and _SUB_OTA0 <= p["subtype"] < _SUB_OTA0 + 16],
                  key=lambda p: p["subtype"])


def _slot_label(seq):
    slots = _ota_slots()
    return slots[(seq - 1) % len(slots)]["label"]


def _otadata():
    for p in espsim.flash().parts:
        if p["type"] == _TYPE_DATA and p["subtype"] == _SUB_DATA_OTA:
            return p
    raise espsim.SimError("no otadata partition in the partition table")


def _ota_entries():
    """Both otadata entries as (seq, state), or None where invalid or blank."""
    od = _otadata()
    fl = espsim.flash()
    buf = bytearray(32)
    out = []
    for i in range(2):
        fl.read(od["offset"] + i * espsim.SECTOR, buf)
        seq, _, state, crc = struct.unpack(_OTA_ENTRY, buf)
        ok = seq != 0xFFFFFFFF and crc == _seq_crc(seq)
        out.append((seq, state) if ok else None)
    return out


def _write_ota(i, seq, state):
    od = _otadata()
    fl = espsim.flash()
    a = od["offset"] + i * espsim.SECTOR
    fl.erase(a, espsim.SECTOR)
    fl.write(a, struct.pack(_OTA_ENTRY, seq, b"\xff" * 20, state, _seq_crc(seq)))


def _app_valid(p):
    # The simulated bootloader's image check: an ESP app image starts with 0xE9.
    b = bytearray(1)
    espsim.flash().read(p["offset"], b)
    return b[0] == 0xE9


def _pick(ent):
    best = None
    for i, e in enumerate(ent):
        if e and e[1] not in (_ST_INVALID, _ST_ABORTED) and _app_valid(espsim.flash().partition(_slot_label(e[0]))):
            if best is None or e[0] > ent[best][0]:
                best = i
    return best


def _next_boot_label():
    ent = _ota_entries()
    i = _pick(ent)
    return _slot_label(ent[i][0]) if i is not None else _ota_slots()[0]["label"]


def _boot():
    """Run the simulated second-stage bootloader once per process; return the running slot."""
    global _running
    if _running is None:
        ent = _ota_entries()
        i = _pick(ent)
        if i is not None and ent[i][1] == _ST_PENDING:
            # Booted once on trial and never confirmed: roll back.
            _write_ota(i, ent[i][0], _ST_ABORTED)
            ent = _ota_entries()
            i = _pick(ent)
        if i is not None and ent[i][1] == _ST_NEW:
            _write_ota(i, ent[i][0], _ST_PENDING)
        _running = _slot_label(ent[i][0]) if i is not None else _ota_slots()[0]["label"]
    return _running


# --- NVS -------------------------------------------------------------------
#
# Kept in the "nvs" partition as an append-only log, power-cut safe like
# ESP-IDF's NVS: the partition is two halves; each starts with a header
# {b"NVSH", generation u32, crc32} and holds records
#   {kind u8, ns_len u8, key_len u8, 0, value_len u16, ns, key, value, crc32}
# kind 1 = i32, 2 = blob, 3 = erase, 4 = commit. A batch of records counts only
# once its commit record is on flash, so a cut mid-commit loses the whole batch
# and nothing else. When the half is full, or holds a torn or uncommitted tail,
# the live entries are copied to the other half, whose header is written last.
#
# NVS encryption: when the device has an NVS key in its simulated eFuse
# (device.json "efuse.nvs_key"; `ictl device create` sets one), each record's
# ns, key and value are encrypted with AES-256 in counter mode, the counter
# block being (generation, flash address, block): a dump of the flash holds no
# NVS value in the clear, as with ESP-IDF's NVS encryption (XTS-AES keyed from
# the flash-encrypted nvs_keys partition, whose key is in read-protected eFuse).
# The CRC covers the stored (encrypted) bytes.

_K_I32 = const(1)
_K_BLOB = const(2)
_K_ERASE = const(3)
_K_COMMIT = const(4)
_HDR = const(16)

_store = None


class _Store:
    def __init__(self):
        fl = espsim.flash()
        p = None
        for q in fl.parts:
            if q["type"] == _TYPE_DATA and q["subtype"] == _SUB_NVS:
                p = q
                break
        if p is None:
            raise espsim.SimError("no nvs partition in the partition table")
        self.base = p["offset"]
        self.half = (p["size"] // espsim.SECTOR // 2) * espsim.SECTOR
        self.data = {}
        k = fl.efuse.get("nvs_key")
        self.ecb = cryptolib.aes(binascii.unhexlify(k), 1) if k else None
        best, gen = -1, 0
        hdr = bytearray(12)
        for h in range(2):
            fl.read(self.base + h * self.half, hdr)
            if hdr[:4] == b"NVSH" and struct.unpack("<I", hdr[8:12])[0] == binascii.crc32(hdr[:8]):
                g = struct.unpack("<I", hdr[4:8])[0]
                if best < 0 or g > gen:
                    best, gen = h, g
        if best < 0:
            self.cur, self.gen = 1, 0
            self._compact()  # formats half 0
        else:
            self.cur, self.gen = best, gen
            if not self._replay():
                self._compact()

    def _replay(self):
        """Apply committed batches; return False if the tail is dirty."""
        fl = espsim.flash()
        start = self.base + self.cur * self.half
        pos, end = _HDR, self.half
        pending = []
        head = bytearray(6)
        while pos + 10 <= end:
            fl.read(start + pos, head)
            if head[0] == 0xFF:
                break
            kind, nl, kl, _, vl = struct.unpack("<BBBBH", head)
            n = 6 + nl + kl + vl + 4
            if kind not in (1, 2, 3, 4) or pos + n > end:
                return False
            rec = bytearray(n)
            fl.read(start + pos, rec)
            if struct.unpack("<I", rec[n - 4:])[0] != binascii.crc32(rec[: n - 4]):
                return False
            if kind == _K_COMMIT:
                for r in pending:
                    self._apply(*r)
                pending = []
            else:
                body = self._crypt(self.gen, start + pos, rec[6 : n - 4])
                ns = body[:nl].decode()
                key = body[nl : nl + kl].decode()
                pending.append((kind, ns, key, body[nl + kl :]))
            pos += n
        self.pos = pos
        return not pending

    def _apply(self, kind, ns, key, val):
        if kind == _K_ERASE:
            self.data.pop((ns, key), None)
        else:
            self.data[(ns, key)] = (kind, val)

    def _crypt(self, gen, addr, data):
        """Encrypt or decrypt a record body stored at addr in generation gen."""
        if self.ecb is None or not data:
            return bytes(data)
        # 256 bytes at a time: small temporaries, as the heap is the app's.
        out = bytearray(data)
        ks = bytearray(256)
        for o in range(0, len(out), 256):
            for i in range(16):
                struct.pack_into("<III", ks, 16 * i, gen, addr, o // 16 + i)
            self.ecb.encrypt(ks, ks)
            k = min(256, len(out) - o)
            v = int.from_bytes(out[o:o + k], "big") ^ int.from_bytes(ks[:k], "big")
            out[o:o + k] = v.to_bytes(k, "big")
        return bytes(out)

    def _record(self, gen, addr, kind, ns=b"", key=b"", val=b""):
        r = struct.pack("<BBBBH", kind, len(ns), len(key), 0, len(val)) + self._crypt(gen, addr, ns + key + val)
        return r + struct.pack("<I", binascii.crc32(r))

    def _compact(self, extra=()):
        """Copy the live entries (plus a batch) to the other half; its header goes last."""
        fl = espsim.flash()
        new = 1 - self.cur
        start = self.base + new * self.half
        fl.erase(start, self.half)
        pos = _HDR
        live = [(v[0], k[0], k[1], v[1]) for k, v in self.data.items()]
        for kind, ns, key, val in live + list(extra):
            r = self._record(self.gen + 1, start + pos, kind, ns.encode(), key.encode(), val)
            if pos + len(r) + 10 > self.half:
                raise OSError(_ERR_NOT_ENOUGH_SPACE, "ESP_ERR_NVS_NOT_ENOUGH_SPACE")
            fl.write(start + pos, r)
            pos += len(r)
        c = self._record(self.gen + 1, start + pos, _K_COMMIT)
        fl.write(start + pos, c)
        pos += len(c)
        hdr = b"NVSH" + struct.pack("<I", self.gen + 1)
        fl.write(start, hdr + struct.pack("<I", binascii.crc32(hdr)))
        self.cur, self.gen, self.pos = new, self.gen + 1, pos
        for r in extra:
            self._apply(*r)

    def commit(self, batch):
        # Record sizes do not depend on where they land: size the batch first.
        size = sum(10 + len(ns.encode()) + len(key.encode()) + len(v) for _, ns, key, v in batch) + 10
        if self.pos + size + 10 > self.half:
            self._compact(batch)
            return
        fl = espsim.flash()
        start = self.base + self.cur * self.half
        for k, ns, key, v in batch + [(_K_COMMIT, "", "", b"")]:
            r = self._record(self.gen, start + self.pos, k, ns.encode(), key.encode(), v)
            fl.write(start + self.pos, r)
            self.pos += len(r)
        for r in batch:
            self._apply(*r)


def _nvs_store():
    global _store
    if _store is None:
        _store = _Store()
    return _store


def _check_key(key):
    if not isinstance(key, str) or not 0 < len(key) <= 15:
        raise OSError(_ERR_KEY_TOO_LONG, "ESP_ERR_NVS_KEY_TOO_LONG")


# Every esp32.NVS(ns) is an nvs_open() whose handle is never given back:
# ports/esp32/esp32_nvs.c (v1.28.0) calls nvs_open in make_new and has no
# nvs_close and no finaliser. Each handle holds an entry of the IDF's handle
# list in the IDF heap (nvs::HandleEntry, ~32 bytes with malloc's overhead);
# the stand-in counts them and refuses past _MAX_HANDLES, as nvs_open does
# with ESP_ERR_NO_MEM once that heap is spent. 512 handles are 16 KiB: about
# what an ESP32 without PSRAM has to spare once Wi-Fi and a TLS session are up
# (a projection: only a board measures its IDF heap; ESPSIM_NVS_HANDLES sets it).
_ERR_NO_MEM = const(0x101)  # ESP_ERR_NO_MEM
_handles = 0
_MAX_HANDLES = int(espsim.os.getenv("ESPSIM_NVS_HANDLES") or 512)


def _nvs_handles():
    """Unix port only: NVS handles opened since boot (none is ever closed)."""
    return _handles


class NVS:
    """esp32.NVS(namespace): changes are staged until commit(), as the docs require."""

    def __init__(self, namespace):
        global _handles
        _check_key(namespace)
        if _handles >= _MAX_HANDLES:
            raise OSError(_ERR_NO_MEM, "ESP_ERR_NO_MEM")
        _nvs_store()
        _handles += 1
        self._ns = namespace
        self._pending = []

    def _lookup(self, key):
        """(kind, value) as this handle sees it, staged changes included, or None."""
        _check_key(key)
        for k, _, kk, val in reversed(self._pending):
            if kk == key:
                return None if k == _K_ERASE else (k, val)
        return _nvs_store().data.get((self._ns, key))

    def _get(self, key, kind):
        v = self._lookup(key)
        if v is None:
            raise OSError(_ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        if v[0] != kind:
            raise OSError(_ERR_TYPE_MISMATCH, "ESP_ERR_NVS_TYPE_MISMATCH")
        return v[1]

    def set_i32(self, key, value):
        _check_key(key)
        self._pending.append((_K_I32, self._ns, key, struct.pack("<i", value)))

    def get_i32(self, key):
        return struct.unpack("<i", self._get(key, _K_I32))[0]

    def set_blob(self, key, value):
        _check_key(key)
        self._pending.append((_K_BLOB, self._ns, key, bytes(value)))

    def get_blob(self, key, buffer):
        v = self._get(key, _K_BLOB)
        if len(buffer) < len(v):
            raise OSError(_ERR_INVALID_LENGTH, "ESP_ERR_NVS_INVALID_LENGTH")
        buffer[: len(v)] = v
        return len(v)

    def erase_key(self, key):
        if self._lookup(key) is None:
            raise OSError(_ERR_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        self._pending.append((_K_ERASE, self._ns, key, b""))

    def commit(self):
        if self._pending:
            batch, self._pending = self._pending, []
            _nvs_store().commit(batch)


def _celsius():
    # Simulated die temperature: a slow drift around 40 C.
    import time

    return 40 + (time.time() % 60) // 6


def mcu_temperature():
    """The chip's internal temperature in degrees C, from the IDF's
    temperature_sensor driver: the ESP32-S2/S3/C3 and later have it
    (ports/esp32/modesp32.c, #if !CONFIG_IDF_TARGET_ESP32)."""
    return _celsius()


def raw_temperature():
    """The original ESP32's only reading: the raw sensor value as an int,
    which MicroPython's ESP32 quick reference gives in degrees Fahrenheit
    (ports/esp32/modesp32.c, #if CONFIG_IDF_TARGET_ESP32). Simulated: the
    same drift, in Fahrenheit."""
    return int(_celsius() * 9 / 5 + 32)


# What the chip lacks is not there (firmware/profile/<chip>.surface): on the
# ESP32 mcu_temperature is absent, on the S3 raw_temperature.
espboard.honour(globals(), "esp32")
