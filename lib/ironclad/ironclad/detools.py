# Streaming applier for detools "sequential" patches (the bsdiff algorithm;
# https://github.com/eerimoq/detools, the format Espressif's esp_delta_ota
# applies). The host makes patches with the detools package; this file only
# applies them.
#
# Patch layout (sizes are detools varints: first byte = more(1) sign(1)
# value(6), then more(1) value(7) per byte, little-endian groups):
#   header byte      0 | patch type (3 bits, 0 = sequential) | compression (4 bits:
#                    0 none, 2 crle, 4 heatshrink; lzma/bz2/zstd/lz4 not offered)
#   to_size          size of the result; 0 ends the patch here
#   then, compressed (heatshrink: one byte (window-4)<<4 | (lookahead-3) first):
#     dfpatch_size   0 (data-format patches are refused)
#     repeated until to_size bytes are out:
#       diff_size, diff_size bytes d:  out = (d + base[from_pos...]) & 0xFF
#       extra_size, extra_size bytes:  out = the bytes
#       adjustment (signed):           from_pos += adjustment
#   and nothing after the last adjustment.
#
# Streaming: the base is read from a partition (the active slot) through a
# 1 KiB cache, the result is written to another partition (the inactive slot)
# one erased 4 KiB sector at a time, and the patch arrives in pieces through
# feed(). Nothing grows with the image: RAM is the sector buffer, the cache,
# the decoder window and a few integers.
#
# Bounds: every size in the patch is checked against the declared result size
# before a byte is written, base reads must stay inside the declared base,
# the patch may not run past its declared length, and the decompressed stream
# must end exactly where the last adjustment does. Decompression is pulled by
# the bsdiff layer, never pushed, so a decompression bomb cannot produce more
# than the result size; control triples that produce nothing are capped so a
# stream of them cannot spin the CPU either.
#
# Resume: after each full sector is written, on_sector(patch) is called; at
# that point state() describes everything up to the input offset `consumed`
# (the sector buffer is empty). A new Patch restored from that state and fed
# the patch from `consumed` on carries on byte-exact: the base never changes
# during an update, so rewriting a sector is idempotent.
import struct
import micropython
from micropython import const

from ironclad import heatshrink

SECTOR = const(4096)
_CACHE = const(1024)
_MAX_VARINT = const(5)  # 6 + 4 * 7 = 34 bits: far above any slot, far below a bomb
_MAX_FROM = const(0x3FFFFFFF)  # base offsets stay machine-word sized
_MAX_IDLE = const(8)  # control triples in a row that produce no byte

COMPRESSIONS = {0: "none", 2: "crle", 4: "heatshrink"}

# Phases.
_P_HEADER = const(0)
_P_TOSIZE = const(1)
_P_CHEADER = const(2)
_P_DFSIZE = const(3)
_P_DIFFSIZE = const(4)
_P_DIFF = const(5)
_P_EXTRASIZE = const(6)
_P_EXTRA = const(7)
_P_ADJUST = const(8)
_P_END = const(9)

# crle (detools' conditional RLE): segments of kind (0 scattered, 1 repeated),
# a size (7 bits per byte, low first, 0x80 = more), then the bytes or the one
# repeated byte.
_C_KIND = const(0)
_C_SIZE = const(1)
_C_SCATTERED = const(2)
_C_BYTE = const(3)
_C_REPEAT = const(4)

_STATE_FMT = "<4sBBBBBBBBiiiiiiiiii"
_STATE_MAGIC = b"DTS1"


class PatchError(ValueError):
    """The patch is corrupt, truncated, of an unsupported kind, or does not
    fit what was declared for it."""


@micropython.viper
def _add(dst: ptr8, doff: int, src: ptr8, soff: int, n: int):
    # dst[doff:doff+n] += src[soff:soff+n], bytewise mod 256 (bsdiff's diff).
    i = 0
    while i < n:
        dst[doff + i] = dst[doff + i] + src[soff + i]
        i += 1


@micropython.viper
def _copy(dst: ptr8, doff: int, src: ptr8, soff: int, n: int):
    i = 0
    while i < n:
        dst[doff + i] = src[soff + i]
        i += 1


@micropython.viper
def _fill(dst: ptr8, doff: int, v: int, n: int):
    i = 0
    while i < n:
        dst[doff + i] = v
        i += 1


class _Crle:
    def __init__(self):
        self.phase = _C_KIND
        self.kind = 0
        self.left = 0
        self.byte = 0
        self.vshift = 0

    def decode(self, src, spos, send, dst, dpos, dend):
        while True:
            ph = self.phase
            if ph == _C_SCATTERED or ph == _C_REPEAT:
                n = min(self.left, dend - dpos)
                if ph == _C_SCATTERED:
                    n = min(n, send - spos)
                    _copy(dst, dpos, src, spos, n)
                    spos += n
                else:
                    _fill(dst, dpos, self.byte, n)
                dpos += n
                self.left -= n
                if self.left:
                    return spos, dpos
                self.phase = _C_KIND
                continue
            if dpos >= dend or spos >= send:
                return spos, dpos
            b = src[spos]
            spos += 1
            if ph == _C_KIND:
                if b > 1:
                    raise PatchError("crle: bad segment kind %d" % b)
                self.kind = b
                self.left = 0
                self.vshift = 0
                self.phase = _C_SIZE
            elif ph == _C_SIZE:
                if self.vshift >= 28:  # 256 MiB: far past any slot
                    raise PatchError("crle: size field too long")
                self.left |= (b & 0x7F) << self.vshift
                self.vshift += 7
                if not b & 0x80:
                    self.phase = _C_SCATTERED if self.kind == 0 else _C_BYTE
                    if self.left == 0:
                        self.phase = _C_KIND
            else:
                self.byte = b
                self.phase = _C_REPEAT

    def pending(self):
        return self.phase == _C_REPEAT

    def finished(self):
        return self.phase == _C_KIND

    def state(self):
        return struct.pack("<BBBBi", self.phase, self.kind, self.byte, self.vshift, self.left)

    def restore(self, b):
        if len(b) != 8:
            raise PatchError("crle state size")
        self.phase, self.kind, self.byte, self.vshift, self.left = struct.unpack("<BBBBi", b)
        if self.phase > _C_REPEAT or self.left < 0:
            raise PatchError("crle state out of range")

    def state_size(self):
        return 8


class _None:
    def decode(self, src, spos, send, dst, dpos, dend):
        n = min(send - spos, dend - dpos)
        _copy(dst, dpos, src, spos, n)
        return spos + n, dpos + n

    def pending(self):
        return False

    def finished(self):
        return True

    def state(self):
        return b""

    def restore(self, b):
        if b:
            raise PatchError("none state size")

    def state_size(self):
        return 0


class Patch:
    """Apply one sequential patch from `base` (the first base_len bytes of a
    partition; base may be None when base_len is 0) to `out` (a partition),
    the result being exactly result_len bytes and the patch exactly
    patch_len bytes. Feed the patch with feed(); done() once it has all been
    applied and checked.

    Buffers: `sector` (4096 bytes) and `cache` (1024 bytes) may be passed in
    so a caller that applies many patches allocates them once."""

    def __init__(self, base, base_len, out, result_len, patch_len, on_sector=None, sector=None, cache=None):
        if base_len < 0 or result_len < 0 or patch_len < 2:
            raise PatchError("declared sizes out of range")
        if base_len and base is None:
            raise PatchError("no base to read")
        self._base = base
        self._base_len = base_len
        self._out = out
        self._result_len = result_len
        self._patch_len = patch_len
        self.on_sector = on_sector
        self._buf = sector if sector is not None else bytearray(SECTOR)
        self._cache = cache if cache is not None else bytearray(_CACHE)
        self._cstart = -1  # base offset held in the cache (-1: nothing)
        self._clen = 0
        self._vbuf = bytearray(1)
        self._dec = None
        self._comp = 0
        self._wsz = 0
        self._lsz = 0
        self.phase = _P_HEADER
        self.consumed = 0  # patch bytes taken so far
        self.to_pos = 0  # result bytes produced (written or in the buffer)
        self._opos = 0  # bytes in the sector buffer
        self._from = 0
        self._seg = 0
        self._idle = 0
        self._vval = 0
        self._vshift = 0
        self._vsign = 0
        self._vcount = 0

    # -- the raw (uncompressed) head of the patch ---------------------------

    def _varint_byte(self, b):
        # One byte of a detools size; returns True when the size is complete
        # (then in self._vval, sign applied).
        if self._vcount >= _MAX_VARINT:
            raise PatchError("size field too long")
        if self._vcount == 0:
            self._vsign = b & 0x40
            self._vval = b & 0x3F
            self._vshift = 6
        else:
            self._vval |= (b & 0x7F) << self._vshift
            self._vshift += 7
        self._vcount += 1
        if b & 0x80:
            return False
        if self._vsign:
            self._vval = -self._vval
        self._vcount = 0
        return True

    def _head(self, b):
        ph = self.phase
        if ph == _P_HEADER:
            if b & 0x80 or (b >> 4) & 7:
                raise PatchError("not a sequential patch (header 0x%02x)" % b)
            self._comp = b & 15
            if self._comp not in COMPRESSIONS:
                raise PatchError("compression %d not supported (none, crle, heatshrink)" % self._comp)
            self.phase = _P_TOSIZE
        elif ph == _P_TOSIZE:
            if self._varint_byte(b):
                if self._vval != self._result_len:
                    raise PatchError("patch makes %d bytes, %d declared" % (self._vval, self._result_len))
                if self._result_len == 0:
                    self.phase = _P_END
                elif self._comp == 4:
                    self.phase = _P_CHEADER
                else:
                    self._dec = _Crle() if self._comp == 2 else _None()
                    self.phase = _P_DFSIZE
        else:
            self._wsz = (b >> 4) + 4
            self._lsz = (b & 15) + 3
            try:
                self._dec = heatshrink.Decoder(self._wsz, self._lsz)
            except heatshrink.HeatshrinkError as e:
                raise PatchError(str(e))
            self.phase = _P_DFSIZE

    # -- the decompressed body ---------------------------------------------

    def _size(self, src, spos, send):
        # Reads one byte of a size field from the decompressed stream.
        # Returns (spos, bytes got (0 or 1), the value once complete or None).
        v = self._vbuf
        spos, got = self._dec.decode(src, spos, send, v, 0, 1)
        if got and self._varint_byte(v[0]):
            return spos, got, self._vval
        return spos, got, None

    def _base_into(self, dpos, n):
        # out[dpos:dpos+n] += base[from:from+n] through the cache.
        f = self._from
        if f < 0 or f + n > self._base_len:
            raise PatchError("patch reads outside the base (%d+%d of %d)" % (f, n, self._base_len))
        buf = self._buf
        while n:
            off = f - self._cstart
            if self._cstart < 0 or off < 0 or off >= self._clen:
                k = min(_CACHE, self._base_len - f)
                mv = memoryview(self._cache)[:k]
                self._base.readblocks(f // SECTOR, mv, f % SECTOR)
                self._cstart = f
                self._clen = k
                off = 0
            k = min(n, self._clen - off)
            _add(buf, dpos, self._cache, off, k)
            dpos += k
            f += k
            n -= k
        self._from = f

    def _flush(self):
        # Writes the sector buffer (padded with the erased value) to its
        # sector of the output partition; the 3-argument writeblocks erases
        # the sector first.
        n = self._opos
        if n < SECTOR:
            _fill(self._buf, n, 0xFF, SECTOR - n)
        self._out.writeblocks((self.to_pos - n) // SECTOR, self._buf)
        self._opos = 0

    def _step(self, src, spos, send):
        # One step of the body; returns the new spos, or -1 if no progress
        # is possible without more input.
        ph = self.phase
        if ph == _P_DIFF or ph == _P_EXTRA:
            n = min(self._seg, SECTOR - self._opos)
            d0 = self._opos
            spos2, d1 = self._dec.decode(src, spos, send, self._buf, d0, d0 + n)
            self.consumed += spos2 - spos
            got = d1 - d0
            if not got:
                return spos2 if spos2 != spos else -1
            if ph == _P_DIFF:
                self._base_into(d0, got)
            self._opos = d1
            self.to_pos += got
            self._seg -= got
            if not self._seg:
                self.phase = _P_EXTRASIZE if ph == _P_DIFF else _P_ADJUST
            if self._opos == SECTOR:
                self._flush()
                if self.on_sector and self.to_pos < self._result_len:
                    self.on_sector(self)
            return spos2
        if ph == _P_END:
            return -1
        spos2, got, v = self._size(src, spos, send)
        self.consumed += spos2 - spos
        if v is None:
            return spos2 if spos2 != spos or got else -1
        if ph == _P_DFSIZE:
            if v:
                raise PatchError("data-format patches are not supported")
            self.phase = _P_DIFFSIZE
        elif ph == _P_DIFFSIZE or ph == _P_EXTRASIZE:
            if v < 0 or self.to_pos + v > self._result_len:
                raise PatchError("patch writes past the declared size")
            self._seg = v
            if ph == _P_DIFFSIZE:
                self._idle = self._idle + 1 if v == 0 else 0
                self.phase = _P_DIFF if v else _P_EXTRASIZE
            else:
                if v:
                    self._idle = 0
                elif self._idle > _MAX_IDLE:
                    raise PatchError("patch makes no progress")
                self.phase = _P_EXTRA if v else _P_ADJUST
        else:
            self._from += v
            if not -_MAX_FROM <= self._from <= _MAX_FROM:
                raise PatchError("adjustment out of range")
            if self.to_pos < self._result_len:
                self.phase = _P_DIFFSIZE
            else:
                if self._opos:
                    self._flush()
                self.phase = _P_END
        return spos2

    def feed(self, data):
        """Apply the next piece of the patch (any length)."""
        n = len(data)
        if self.consumed + n > self._patch_len:
            raise PatchError("patch longer than declared")
        spos = 0
        while spos < n and self.phase <= _P_CHEADER:
            self._head(data[spos])
            spos += 1
            self.consumed += 1
        while self.phase > _P_CHEADER:
            s = self._step(data, spos, n)
            if s < 0:
                break
            spos = s
        if spos < n:
            raise PatchError("patch data after the end")
        if self.consumed == self._patch_len and not self.done():
            raise PatchError("patch truncated or corrupt")

    def done(self):
        """True once the whole result is written and the patch ended cleanly."""
        return (self.phase == _P_END and self.consumed == self._patch_len
                and (self._dec is None or (self._dec.finished() and not self._dec.pending())))

    # -- checkpoints -------------------------------------------------------

    def state(self):
        """Everything needed to carry on from `consumed` (call only from
        on_sector, when the sector buffer is empty)."""
        if self._opos:
            raise PatchError("state taken mid-sector")
        head = struct.pack(_STATE_FMT, _STATE_MAGIC, self.phase, self._comp, self._wsz, self._lsz,
                           self._vshift, self._vsign, self._vcount, 0, self.consumed, self.to_pos,
                           self._from, self._seg, self._idle, self._vval, self._base_len,
                           self._result_len, self._patch_len, 0)
        return head + (self._dec.state() if self._dec else b"")

    def restore(self, blob):
        n = struct.calcsize(_STATE_FMT)
        if len(blob) < n:
            raise PatchError("checkpoint too short")
        (magic, self.phase, self._comp, self._wsz, self._lsz, self._vshift, self._vsign, self._vcount, _,
         self.consumed, self.to_pos, self._from, self._seg, self._idle, self._vval, bl, rl, pl,
         _) = struct.unpack(_STATE_FMT, blob[:n])
        if (magic != _STATE_MAGIC or (bl, rl, pl) != (self._base_len, self._result_len, self._patch_len)
                or self.phase < _P_DFSIZE or self.phase >= _P_END or self._comp not in COMPRESSIONS
                or self.to_pos % SECTOR or not 0 <= self.to_pos <= self._result_len
                or not 0 <= self.consumed <= self._patch_len or not 0 <= self._seg <= self._result_len
                or self._vcount >= _MAX_VARINT):
            raise PatchError("checkpoint does not match this patch")
        if self._comp == 4:
            self._dec = heatshrink.Decoder(self._wsz, self._lsz)
        else:
            self._dec = _Crle() if self._comp == 2 else _None()
        try:
            self._dec.restore(blob[n:])
        except heatshrink.HeatshrinkError as e:
            raise PatchError(str(e))
        self._opos = 0
        self._cstart = -1
