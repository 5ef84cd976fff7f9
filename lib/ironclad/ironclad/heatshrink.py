# Heatshrink decoder (LZSS, https://github.com/atomicobject/heatshrink), the
# compression Espressif's esp_delta_ota and detools use for patches.
#
# The bit stream, most significant bit first:
#   1 <8 bits>                    a literal byte
#   0 <W bits: i> <L bits: c>     copy c + 1 bytes from i + 1 bytes back
# W is the window size (2**W bytes of history), L the lookahead. The history
# starts as zeros, as in the reference decoder, so a back-reference before the
# first byte yields zeros. The encoder pads its last byte with zero bits.
#
# Streaming with fixed buffers: the decoder owns only its window (2**W bytes)
# and seven integers. decode() takes whatever input it is given and writes at
# most the room it is given, so a caller bounds the output per call (and a
# decompression bomb only ever fills the buffer it asked to fill). A field is
# consumed only when all its bits are there, so decoding can stop between any
# two input bytes and go on later, even in another process: state() and
# restore() carry the window and the integers across a reboot.
#
# The inner loop is viper (native code); the state lives in an int array so
# the native function reads and writes it directly.
import array
import struct
import micropython
from micropython import const

MIN_WINDOW = const(4)
MAX_WINDOW = const(12)  # 4 KiB of history at most: a device-side RAM bound
MIN_LOOKAHEAD = const(3)

# Indices into the state array.
_PHASE = const(0)  # 0 tag, 1 literal, 2 index, 3 count, 4 copying a back-reference
_BITS = const(1)  # input bits not consumed yet (right-aligned)
_NBITS = const(2)
_INDEX = const(3)  # back-reference distance
_COUNT = const(4)  # bytes of the back-reference still to copy
_HEAD = const(5)  # next write position in the window
_OUTPOS = const(6)  # out: where the last decode() stopped writing
_NSTATE = const(7)


class HeatshrinkError(ValueError):
    """Parameters out of range, or a stream that does not end cleanly."""


@micropython.viper
def _decode(st: ptr32, win: ptr8, wbits: int, lbits: int, src: ptr8, spos: int, send: int,
            dst: ptr8, dpos: int, dend: int) -> int:
    # Runs the decoder over src[spos:send] into dst[dpos:dend]; returns the new
    # spos and leaves the new dpos in st[_OUTPOS]. Stops when it needs input
    # it does not have or room it was not given.
    phase = st[0]
    bits = st[1]
    nb = st[2]
    idx = st[3]
    cnt = st[4]
    head = st[5]
    wmask = (1 << wbits) - 1
    while True:
        if phase == 0:
            if nb == 0:
                if spos >= send:
                    break
                bits = src[spos]
                spos += 1
                nb = 8
            nb -= 1
            phase = 1 if (bits >> nb) & 1 else 2
        elif phase == 1:
            if dpos >= dend:
                break
            if nb < 8:
                if spos >= send:
                    break
                bits = ((bits << 8) | src[spos]) & 0xFFFF
                spos += 1
                nb += 8
            nb -= 8
            c = (bits >> nb) & 0xFF
            win[head] = c
            head = (head + 1) & wmask
            dst[dpos] = c
            dpos += 1
            phase = 0
        elif phase == 2 or phase == 3:
            need = wbits if phase == 2 else lbits
            while nb < need and spos < send:
                bits = ((bits << 8) | src[spos]) & 0xFFFFFF
                spos += 1
                nb += 8
            if nb < need:
                break
            nb -= need
            v = ((bits >> nb) & ((1 << need) - 1)) + 1
            if phase == 2:
                idx = v
                phase = 3
            else:
                cnt = v
                phase = 4
        else:
            while cnt > 0 and dpos < dend:
                c = win[(head - idx) & wmask]
                win[head] = c
                head = (head + 1) & wmask
                dst[dpos] = c
                dpos += 1
                cnt -= 1
            if cnt:
                break
            phase = 0
    st[0] = phase
    st[1] = bits & ((1 << nb) - 1)
    st[2] = nb
    st[3] = idx
    st[4] = cnt
    st[5] = head
    st[6] = dpos
    return spos


class Decoder:
    """One heatshrink stream with window 2**window_sz2 and lookahead
    2**lookahead_sz2 (detools' defaults: 8 and 7)."""

    def __init__(self, window_sz2=8, lookahead_sz2=7):
        if not MIN_WINDOW <= window_sz2 <= MAX_WINDOW or not MIN_LOOKAHEAD <= lookahead_sz2 < window_sz2:
            raise HeatshrinkError("heatshrink window/lookahead %d/%d not supported" % (window_sz2, lookahead_sz2))
        self.window_sz2 = window_sz2
        self.lookahead_sz2 = lookahead_sz2
        self._win = bytearray(1 << window_sz2)
        self._st = array.array("i", [0] * _NSTATE)

    def decode(self, src, spos, send, dst, dpos, dend):
        """Decode from src[spos:send] into dst[dpos:dend].
        Returns (new spos, new dpos)."""
        spos = _decode(self._st, self._win, self.window_sz2, self.lookahead_sz2, src, spos, send, dst, dpos, dend)
        return spos, self._st[_OUTPOS]

    def pending(self):
        """True while a back-reference has bytes left to give."""
        return self._st[_PHASE] == 4

    def finished(self):
        """True if the input so far ends cleanly: nothing half-read but the
        encoder's zero padding of its last byte (fewer than 8 zero bits,
        which a small window can mistake for a tag 0 and an index)."""
        st = self._st
        ph = st[_PHASE]
        nb = st[_NBITS]
        if st[_BITS]:
            return False
        if ph == 0:
            return nb < 8
        if ph == 2:
            return 1 + nb < 8
        if ph == 3:
            return st[_INDEX] == 1 and 1 + self.window_sz2 + nb < 8
        return False

    def state(self):
        """The decoder's state as bytes (integers, then the window)."""
        return struct.pack("<%di" % _NSTATE, *self._st) + bytes(self._win)

    def restore(self, blob):
        n = 4 * _NSTATE
        if len(blob) != n + len(self._win):
            raise HeatshrinkError("heatshrink state size")
        st = self._st
        for i, v in enumerate(struct.unpack("<%di" % _NSTATE, blob[:n])):
            st[i] = v
        self._win[:] = blob[n:]
        # The window index and counters must be in range, or the viper loop
        # would index outside the window.
        wmask = len(self._win) - 1
        if not (0 <= st[_PHASE] <= 4 and 0 <= st[_NBITS] <= 24 and 0 <= st[_HEAD] <= wmask
                and 0 <= st[_INDEX] <= wmask + 1 and 0 <= st[_COUNT] <= (1 << self.lookahead_sz2)):
            raise HeatshrinkError("heatshrink state out of range")

    def state_size(self):
        return 4 * _NSTATE + len(self._win)
