# A/B app slots: which slot boots, trial boots with bounded attempts, the
# security-counter floor, fallback and recovery. Design: docs/verified-boot.md.
#
# The boot state record lives in the "bootstate" partition, written the way
# ESP-IDF writes otadata: two copies, one per 4 KiB sector, each with a
# sequence number and a CRC. An update erases and rewrites the sector that
# does not hold the newest valid copy, so a power cut or a torn write at any
# point leaves the previous record readable.
#
# The lowest of the boot modules: it imports nothing of ironclad. Installing
# an image (verify it, make it boot next on trial) is ironclad.slots; the boot
# itself (choose, verify, spend a trial attempt, mount) is ironclad.bootflow.
#
# Record (32 bytes, little-endian):
#   0  4s magic b"ICBS"   4  B version (1)   5  B active slot (0 app_a, 1 app_b)
#   6  B trial (0/1)       7  B attempts left (trial boots still allowed)
#   8  I seq               12 I floor (lowest security counter accepted)
#   16 B fallback slot (0, 1, or 0xFF: none)   17..27 zero
#   28 I CRC-32 of bytes 0..27
import binascii
import struct
from micropython import const

SLOTS = ("app_a", "app_b")
PART = "bootstate"
ATTEMPTS = const(3)  # boots a new image gets to confirm itself
_MAGIC = b"ICBS"
_FMT = "<4sBBBBIIB11s"
_SIZE = const(32)
NONE = const(0xFF)  # no fallback slot

# The image this boot verified and mounted: {"slot", "version", "counter",
# "key_id", "sha256"}; plain values, so the verifier's modules can be unloaded
# after boot (their RAM goes back to the app).
_booted = None
_window = None  # the mounted payload: VfsRom keeps a pointer, we keep the object


class State:
    def __init__(self, active=0, trial=0, attempts=0, seq=0, floor=0, fallback=NONE, copy=-1):
        self.active, self.trial, self.attempts = active, trial, attempts
        self.seq, self.floor, self.fallback, self.copy = seq, floor, fallback, copy

    def as_dict(self):
        return {"active": SLOTS[self.active], "trial": bool(self.trial), "attempts": self.attempts,
                "floor": self.floor, "fallback": SLOTS[self.fallback] if self.fallback != NONE else None,
                "seq": self.seq, "booted": _booted["slot"] if _booted else None}


def encode(st):
    body = struct.pack(_FMT, _MAGIC, 1, st.active, 1 if st.trial else 0, st.attempts, st.seq,
                       st.floor, st.fallback, bytes(11))
    return body + struct.pack("<I", binascii.crc32(body))


def decode(rec, copy=-1):
    """A State from 32 record bytes, or None if the copy is blank, torn or corrupt."""
    if len(rec) != _SIZE or struct.unpack_from("<I", rec, 28)[0] != binascii.crc32(memoryview(rec)[:28]):
        return None
    magic, ver, active, trial, attempts, seq, floor, fallback, zero = struct.unpack_from(_FMT, rec)
    if magic != _MAGIC or ver != 1 or active > 1 or trial > 1 or fallback not in (0, 1, NONE) \
            or zero != bytes(11) or attempts > ATTEMPTS:
        return None
    return State(active, trial, attempts, seq, floor, fallback, copy)


def _bdev():
    import esp32

    found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=PART)
    if not found:
        raise OSError("no %s partition in the partition table" % PART)
    return found[0]


def read():
    """The newest valid copy; a fresh State if neither copy is valid."""
    p = _bdev()
    buf = bytearray(_SIZE)
    best = None
    for i in range(2):
        p.readblocks(i, buf)
        st = decode(buf, i)
        if st and (best is None or st.seq > best.seq):
            best = st
    return best or State()


def write(st):
    """Write st as the next record, over the copy that is not the newest."""
    st.seq += 1
    target = 1 - st.copy if st.copy >= 0 else 0
    p = _bdev()
    p.ioctl(6, target)  # erase the sector: the other copy stays intact
    p.writeblocks(target, encode(st), 0)
    st.copy = target
    return st


def state():
    return read().as_dict()


def active():
    return SLOTS[read().active]


def inactive():
    return SLOTS[1 - read().active]


def floor():
    return read().floor


def booted():
    """The image verified at this boot as a dict (slot, version, counter,
    key_id, sha256), or None (recovery mode)."""
    return _booted


def set_booted(label, h, window):
    """Record the image this boot mounted (label None: none, recovery)."""
    global _booted, _window
    _booted = None if label is None else {"slot": label, "version": h.version, "counter": h.counter,
                                          "key_id": h.key_id, "sha256": h.sha256}
    _window = window


def running(label):
    return _booted is not None and _booted["slot"] == label


def confirm():
    """The app passed its health check: keep the running image and raise the
    floor to its security counter. Returns the new state as a dict."""
    if not _booted:
        raise ValueError("no verified image is running")
    st = read()
    if not running(SLOTS[st.active]):
        raise ValueError("the running image is no longer the active slot")
    ctr = _booted["counter"]
    if st.trial or ctr > st.floor:
        st.trial, st.attempts = 0, 0
        st.floor = max(st.floor, ctr)
        write(st)
    return st.as_dict()
