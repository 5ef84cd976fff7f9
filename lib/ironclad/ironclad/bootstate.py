# A/B app slots: which slot boots, trial boots with bounded attempts, the
# security-counter floor, fallback and recovery. Design: docs/verified-boot.md.
#
# The boot state record lives in the "bootstate" partition, written the way
# ESP-IDF writes otadata: two copies, one per 4 KiB sector, each with a
# sequence number and a CRC. An update erases and rewrites the sector that
# does not hold the newest valid copy, so a power cut or a torn write at any
# point leaves the previous record readable.
#
# Record (32 bytes, little-endian):
#   0  4s magic b"ICBS"   4  B version (1)   5  B active slot (0 app_a, 1 app_b)
#   6  B trial (0/1)       7  B attempts left (trial boots still allowed)
#   8  I seq               12 I floor (lowest security counter accepted)
#   16 B fallback slot (0, 1, or 0xFF: none)   17..27 zero
#   28 I CRC-32 of bytes 0..27
import binascii
import struct
import sys
from micropython import const

from ironclad import events, image

SLOTS = ("app_a", "app_b")
PART = "bootstate"
ATTEMPTS = const(3)  # boots a new image gets to confirm itself
_MAGIC = b"ICBS"
_FMT = "<4sBBBBIIB11s"
_SIZE = const(32)
_NONE = const(0xFF)
_SECTOR = const(4096)

_booted = None  # (label, Header) of the image this boot verified and mounted
_window = None  # the mounted payload: VfsRom keeps a pointer, we keep the object


class State:
    def __init__(self, active=0, trial=0, attempts=0, seq=0, floor=0, fallback=_NONE, copy=-1):
        self.active, self.trial, self.attempts = active, trial, attempts
        self.seq, self.floor, self.fallback, self.copy = seq, floor, fallback, copy

    def as_dict(self):
        return {"active": SLOTS[self.active], "trial": bool(self.trial), "attempts": self.attempts,
                "floor": self.floor, "fallback": SLOTS[self.fallback] if self.fallback != _NONE else None,
                "seq": self.seq, "booted": _booted[0] if _booted else None}


def encode(st):
    body = struct.pack(_FMT, _MAGIC, 1, st.active, 1 if st.trial else 0, st.attempts, st.seq,
                       st.floor, st.fallback, bytes(11))
    return body + struct.pack("<I", binascii.crc32(body))


def decode(rec, copy=-1):
    """A State from 32 record bytes, or None if the copy is blank, torn or corrupt."""
    if len(rec) != _SIZE or struct.unpack_from("<I", rec, 28)[0] != binascii.crc32(memoryview(rec)[:28]):
        return None
    magic, ver, active, trial, attempts, seq, floor, fallback, zero = struct.unpack_from(_FMT, rec)
    if magic != _MAGIC or ver != 1 or active > 1 or trial > 1 or fallback not in (0, 1, _NONE) \
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
    """(label, Header) of the image verified at this boot, or None (recovery)."""
    return _booted


def _index(label):
    try:
        return SLOTS.index(label)
    except ValueError:
        raise ValueError("not an app slot: %r" % (label,))


def _try(label, st):
    try:
        return image.verify(label, floor=st.floor, event="boot")
    except image.Rejected:
        return None


def select():
    """Boot-time decision: verify the active slot (after handling an expired
    trial), else the other slot; returns (label, Header), or None when neither
    slot holds an image that may run (recovery mode)."""
    global _booted
    st = read()
    if st.trial and st.attempts == 0:
        # The new image booted ATTEMPTS times and never confirmed itself.
        events.record("boot", "trial_expired", detail=SLOTS[st.active])
        if st.fallback != _NONE:
            st.active = st.fallback
        st.trial, st.fallback = 0, _NONE
        write(st)
    order = (st.active, 1 - st.active)
    for i in order:
        h = _try(SLOTS[i], st)
        if h is None:
            continue
        if i != st.active:
            # The active slot failed verification: boot the other one, which
            # is signed and not below the floor, and make it the active slot.
            events.record("boot", "fallback", outcome="info", detail=SLOTS[i])
            st.active, st.trial, st.attempts, st.fallback = i, 0, 0, _NONE
            write(st)
        _booted = (SLOTS[i], h)
        return _booted
    events.record("boot", "recovery", outcome="failed", detail="no verified app image")  # says so on every boot
    return None


def begin_attempt():
    """Called just before the app runs: a trial boot uses up one attempt
    (on flash first, so a crash or power cut in the app still counts)."""
    st = read()
    if _booted and st.trial and SLOTS[st.active] == _booted[0] and st.attempts:
        st.attempts -= 1
        write(st)


def confirm():
    """The app passed its health check: keep the running image and raise the
    floor to its security counter. Returns the new state as a dict."""
    if not _booted:
        raise ValueError("no verified image is running")
    st = read()
    label, h = _booted
    if SLOTS[st.active] != label:
        raise ValueError("the running image is no longer the active slot")
    if st.trial or h.counter > st.floor:
        st.trial, st.attempts = 0, 0
        st.floor = max(st.floor, h.counter)
        write(st)
    return st.as_dict()


def install(label, header=None):
    """Make the image just written into slot `label` boot next, on trial.
    The slot is verified here (whatever the caller checked); the running
    slot becomes the fallback. Raises image.Rejected, ValueError."""
    i = _index(label)
    if _booted and _booted[0] == label:
        raise ValueError("cannot install over the running slot")
    st = read()
    h = image.verify(label, floor=st.floor, event="install")
    if header is not None and header.raw != h.raw:
        raise image.Rejected(image.CHANGED)
    prev = st.active
    if prev != i and ((_booted and _booted[0] == SLOTS[prev]) or _try(SLOTS[prev], st)):
        # A trial needs somewhere to fall back to; with no good image to
        # return to (recovery), the new image boots without a trial.
        st.trial, st.attempts, st.fallback = 1, ATTEMPTS, prev
    else:
        st.trial, st.attempts, st.fallback = 0, 0, _NONE
    st.active = i
    write(st)
    return h


def install_file(path, label=None):
    """Recovery and full updates: copy a signed image file into a slot
    (default: the inactive one) and install it. Only an image that verifies
    is ever marked bootable; a bad one leaves the state as it was."""
    import os

    label = label or inactive()
    if _booted and _booted[0] == label:
        raise ValueError("cannot install over the running slot")
    size = os.stat(path)[6]
    w = image.SlotWriter(label)
    if size > w.size:
        events.record("install", image.TOO_LARGE, detail=label)
        raise image.Rejected(image.TOO_LARGE)
    buf = bytearray(1024)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            w.write(memoryview(buf)[:n])
    return install(label)


def mount(label, h, where="/app"):
    """Mount a verified payload read-only with vfs.VfsRom."""
    global _window
    import vfs

    win = image.map_payload(label, h)
    vfs.mount(vfs.VfsRom(win), where)
    _window = win


def boot():
    """What the frozen boot.py runs: pick and verify, mount at /app, and put
    /app first on the module path (nothing on the writable filesystem is on
    it). Returns the Header, or None in recovery mode."""
    sel = select()
    if sel is None:
        print("ironclad: recovery mode: no verified app image; only a signed full image can be installed")
        return None
    label, h = sel
    try:
        mount(label, h)
    except (image.Rejected, OSError) as e:
        global _booted
        _booted = None
        events.record("boot", "mount_failed", outcome="failed", detail=label)
        print("ironclad: recovery mode: cannot mount %s (%r)" % (label, e))
        return None
    sys.path[:] = ["/app"] + [p for p in sys.path if p not in ("", ".", "/", "/lib", "/app")]
    print("ironclad: boot %s %s%s" % (label, h.describe(), " (trial)" if read().trial else ""))
    return h
