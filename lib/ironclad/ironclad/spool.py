# Store and forward: a bounded queue of sealed messages on flash (littlefs),
# for readings taken while the broker is out of reach. Delivered oldest first,
# each one removed only after publish() returned (the QoS 1 PUBACK), so
# nothing within the limits is lost to a broker restart, a reconnect or a
# power cut; a cut between a PUBACK and the head update resends that one
# message (QoS 1 is at least once; the console drops it by its counter).
#
# Layout, in one directory:
#   NNNNNNNN   segments, numbered up; records appended until seg_bytes
#   head       where delivery resumes + drop counters (written whole)
# Record: len u16, ~len u16, time u32 (Unix s, 0 = clock not set), crc32 of
# the data u32, then the data. A file write in littlefs is committed at close
# (copy on write), so a cut leaves a segment or the head file as it was
# before or after the operation, never half written; the length check and
# the CRC catch anything else (flash corruption), and a segment with a bad
# record is skipped from there (its records counted as dropped).
#
# Limits: max_bytes of queued records (headers included) and max_age_s.
# Oldest go first; the number dropped for each reason is kept in the head
# file and reported by stats(). Age is only known for records stamped with a
# set clock; unstamped ones are bounded by max_bytes alone.
import binascii
import os
import struct
from micropython import const

from ironclad import events
from ironclad.events import _wall  # Unix seconds, 0 while the clock is not set

PATH = "/ironclad/spool"
_HDR = "<HHII"
_HDR_LEN = const(12)
_HEAD = "<IIIII"  # segment, offset, dropped (size), dropped (age), dropped (corrupt)
_HEAD_LEN = const(20)  # then its crc32


class Spool:
    """The queue in directory path. max_bytes: queued records, headers
    included; max_age_s: 0 for no age limit; seg_bytes: segment file size
    (a record must fit one)."""

    def __init__(self, path=PATH, max_bytes=32768, max_age_s=7 * 86400, seg_bytes=4096):
        if seg_bytes < 64 or max_bytes < seg_bytes:
            raise ValueError("spool limits")
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.seg_bytes = seg_bytes
        self._hdr = bytearray(_HDR_LEN)
        self._buf = bytearray(0)
        self._full_noted = False
        _makedirs(path)
        self._load()

    # -- state -------------------------------------------------------------
    def _seg(self, n):
        return "%s/%08d" % (self.path, n)

    def _load(self):
        segs = []
        for name, *_ in os.ilistdir(self.path):
            if len(name) == 8 and name.isdigit():
                segs.append(int(name))
        segs.sort()
        self.dropped = [0, 0, 0]
        seg = off = 0
        try:
            with open(self.path + "/head", "rb") as f:
                b = f.read()
            if len(b) == _HEAD_LEN + 4 and struct.unpack("<I", b[_HEAD_LEN:])[0] == binascii.crc32(b[:_HEAD_LEN]):
                seg, off, *self.dropped = struct.unpack(_HEAD, b)
        except OSError:
            pass
        # Segments before the head were delivered (a cut came between the head
        # update and their removal).
        while segs and segs[0] < seg:
            os.remove(self._seg(segs.pop(0)))
        if not segs:
            segs = [max(seg, 1)]
        if seg != segs[0] or off > _size(self._seg(seg)):
            seg, off = segs[0], 0
        self._head = [seg, off]
        self._last = segs[-1]
        self._scan()

    def _scan(self):
        # Count what is queued from the head on, and find where the last
        # segment's records end. A damaged tail is never appended to: the
        # next put starts a new segment.
        self._count = 0
        self._bytes = 0
        seg, pos = self._head
        for n in range(seg, self._last + 1):
            name = self._seg(n)
            size = _size(name)
            if n != seg:
                pos = 0
            if size:
                with _open(name) as f:
                    while True:
                        ln = self._read_hdr(f, pos, size)
                        if ln < 0:
                            break
                        self._count += 1
                        self._bytes += _HDR_LEN + ln
                        pos += _HDR_LEN + ln
            if n == self._last:
                self._tail = pos if pos >= size else self.seg_bytes

    def _read_hdr(self, f, pos, size):
        # Length of the record at pos, or -1 when there is no whole record.
        if size - pos < _HDR_LEN:
            return -1
        f.seek(pos)
        h = self._hdr
        f.readinto(h)
        ln, inv, _, _ = struct.unpack(_HDR, h)
        if ln ^ inv != 0xFFFF or pos + _HDR_LEN + ln > size:
            return -1
        return ln

    def _save_head(self):
        b = struct.pack(_HEAD, self._head[0], self._head[1], *self.dropped)
        with open(self.path + "/head", "wb") as f:
            f.write(b)
            f.write(struct.pack("<I", binascii.crc32(b)))

    def _move_head(self, seg, off):
        # Record the new head first, then remove the segments it left: a cut
        # in between leaves only delivered segments, which _load removes.
        old = self._head[0]
        self._head = [seg, off]
        self._save_head()
        for n in range(old, seg):
            try:
                os.remove(self._seg(n))
            except OSError:
                pass

    def stats(self):
        """{"queued": records, "bytes": queued bytes, "dropped_size",
        "dropped_age", "dropped_corrupt": records dropped since the spool
        was made}."""
        return {"queued": self._count, "bytes": self._bytes, "dropped_size": self.dropped[0],
                "dropped_age": self.dropped[1], "dropped_corrupt": self.dropped[2]}

    def __len__(self):
        return self._count

    # -- the oldest record -------------------------------------------------
    def _peek(self):
        """(data memoryview, time, length) of the oldest record, or None.
        Skips (and counts) damaged segments."""
        while self._count:
            seg, off = self._head
            name = self._seg(seg)
            size = _size(name)
            if off >= size and seg < self._last:
                self._move_head(seg + 1, 0)
                continue
            if size:
                with _open(name) as f:
                    ln = self._read_hdr(f, off, size)
                    if ln >= 0:
                        _, _, t, crc = struct.unpack(_HDR, self._hdr)
                        if len(self._buf) < ln:
                            self._buf = bytearray(ln)
                        mv = memoryview(self._buf)[:ln]
                        if f.readinto(mv) == ln and binascii.crc32(mv) == crc:
                            return mv, t, ln
            # Damaged (flash corruption: littlefs itself never leaves a torn
            # write): the rest of this segment cannot be parsed, so skip it
            # and count what that takes off the queue.
            before = self._count
            if seg < self._last:
                self._move_head(seg + 1, 0)
            else:
                self._move_head(seg, max(size, off))
            self._scan()
            self.dropped[2] += before - self._count
            self._save_head()
        return None

    def _pop(self, ln, reason=-1):
        # Advance the head past the oldest record (ln data bytes).
        seg, off = self._head
        off += _HDR_LEN + ln
        self._count -= 1
        self._bytes -= _HDR_LEN + ln
        if reason >= 0:
            self.dropped[reason] += 1
        if seg < self._last and off >= _size(self._seg(seg)):
            self._move_head(seg + 1, 0)
        else:
            self._move_head(seg, off)
        if not self._count:
            self._full_noted = False

    def _expire(self):
        now = _wall()
        if not self.max_age_s or not now:
            return
        while True:
            r = self._peek()
            if r is None or not r[1] or now - r[1] <= self.max_age_s:
                return
            self._pop(r[2], 1)

    # -- the API -----------------------------------------------------------
    def put(self, data):
        """Queue one message (bytes-like), dropping the oldest to stay within
        max_bytes. Returns when the record is committed to flash."""
        ln = len(data)
        need = _HDR_LEN + ln
        if need > self.seg_bytes:
            raise ValueError("spool record too large")
        self._expire()
        while self._count and self._bytes + need > self.max_bytes:
            r = self._peek()
            if r is None:
                break
            if not self._full_noted:
                # One event per episode, not one per dropped record.
                events.record("spool", "full", "failed", "oldest readings dropped")
                self._full_noted = True
            self._pop(r[2], 0)
        if self._tail + need > self.seg_bytes:
            self._last += 1
            self._tail = 0
        struct.pack_into(_HDR, self._hdr, 0, ln, ln ^ 0xFFFF, _wall(), binascii.crc32(data))
        with open(self._seg(self._last), "ab") as f:
            f.write(self._hdr)
            f.write(data)
        if self._count == 0 and self._head != [self._last, self._tail]:
            # The spool was empty: the head moves to this record.
            self._move_head(self._last, self._tail)
        self._tail += need
        self._count += 1
        self._bytes += need

    def flush(self, publish, limit=0):
        """Deliver queued messages oldest first: publish(data) must return
        only once the broker acknowledged (QoS 1) and raise otherwise; the
        exception propagates and the message stays queued. Returns how many
        were delivered (at most limit, when given)."""
        n = 0
        self._expire()
        while not limit or n < limit:
            r = self._peek()
            if r is None:
                return n
            publish(r[0])
            self._pop(r[2])
            n += 1
        return n


def _open(name):
    return open(name, "rb")


def _size(name):
    try:
        return os.stat(name)[6]
    except OSError:
        return 0


def _makedirs(path):
    p = ""
    for part in path.split("/"):
        if not part:
            continue
        p += "/" + part if (p or path.startswith("/")) else part
        try:
            os.mkdir(p)
        except OSError:
            pass
