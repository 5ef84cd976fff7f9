# AES-CCM (RFC 3610, NIST SP 800-38C) over cryptolib.
#
# cryptolib has AES-ECB and AES-CBC only, but CCM needs nothing else:
#   * CTR: the keystream S_i = E(A_i) is one ECB call over all the counter
#     blocks A_0..A_m laid out in one buffer;
#   * CBC-MAC: the MAC is the last block of a CBC encryption (IV 0) of
#     B_0 || encoded AAD || padded payload, one CBC call over one buffer.
# So both AES passes run in C over the whole message. The byte work around them
# (counter blocks, XOR of keystream and data, padding, tag check) is done by
# small viper functions, by 32-bit words where the buffers allow; no Python loop
# runs per byte or per block, and the rest is a fixed number of Python steps per
# message.
#
# Memory: a CCM object keeps its two cryptolib objects (key schedules) and its
# two work buffers (keystream, MAC input), which grow to the longest message
# seen and are then reused. The word-wise paths check alignment and fall back to bytes, because
# the ESP32 faults on an unaligned 32-bit access and a caller's memoryview can
# start anywhere.
#
# Needs the native emitter (viper): present on the unix port and on ESP32
# (xtensawin); code frozen into firmware must be built with mpy-cross -march.
#
# Key sizes: 128 and 256 bits. cryptolib refuses 192-bit keys, so AES-192-CCM
# is not offered (rather than done with AES in Python).
from micropython import const
import micropython
import cryptolib

_ECB = const(1)
_CBC = const(2)
_BLK = const(16)
_MAX_LEN = const(0x3FFFFFFF)  # lengths go through viper ints (machine words)

_ZERO = bytes(16)


class AuthError(ValueError):
    """The tag did not match: the message was forged or corrupted, or the key,
    nonce or AAD differ from the sender's. No plaintext is released."""


@micropython.viper
def _xor3(dst: ptr8, doff: int, a: ptr8, aoff: int, b: ptr8, boff: int, n: int):
    # dst[doff:doff+n] = a[aoff:aoff+n] ^ b[boff:boff+n]; dst may be a
    # caller's buffer at any alignment (then bytewise).
    d = uint(dst) + uint(doff)
    x = uint(a) + uint(aoff)
    y = uint(b) + uint(boff)
    i = 0
    if int((d | x | y) & uint(3)) == 0:
        d32 = ptr32(d)
        x32 = ptr32(x)
        y32 = ptr32(y)
        w = n >> 2
        while i < w:
            d32[i] = x32[i] ^ y32[i]
            i += 1
        i = w << 2
    d8 = ptr8(d)
    x8 = ptr8(x)
    y8 = ptr8(y)
    while i < n:
        d8[i] = x8[i] ^ y8[i]
        i += 1


@micropython.viper
def _tag_out(out: ptr8, ooff: int, mac: ptr8, tp: int, ks: ptr8, t: int, chain: ptr8):
    # out[ooff:ooff+t] = (T ^ S_0)[:t], the tag; and T, the CBC state, is
    # kept in chain for the next message (see CCM._prepare).
    i = 0
    while i < 16:
        x = mac[tp + i]
        chain[i] = x
        if i < t:
            out[ooff + i] = x ^ ks[i]
        i += 1


@micropython.viper
def _tag_diff(mac: ptr8, tp: int, ks: ptr8, got: ptr8, goff: int, t: int, chain: ptr8) -> int:
    # OR over i < t of (T ^ S_0)[i] ^ got[i]: 0 iff the received tag is right.
    # No early exit, so the time does not tell where a forged tag goes wrong.
    # Keeps T in chain, as _tag_out does.
    acc = 0
    i = 0
    while i < 16:
        x = mac[tp + i]
        chain[i] = x
        if i < t:
            acc |= (x ^ ks[i]) ^ got[goff + i]
        i += 1
    return acc


@micropython.viper
def _zero(buf: ptr8, off: int, n: int):
    i = off
    n += off
    while i < n:
        buf[i] = 0
        i += 1


@micropython.viper
def _ctr_blocks(buf: ptr8, nblk: int, nonce: ptr8, nlen: int):
    # Counter blocks A_0..A_(nblk-1): flags (L-1) || nonce || i, i big-endian
    # in the last L = 15 - nlen bytes. The message length check keeps
    # i < 2**(8*L), so a counter never spills into the nonce.
    buf[0] = 14 - nlen
    i = 0
    while i < nlen:
        buf[1 + i] = nonce[i]
        i += 1
    i += 1
    while i < 16:
        buf[i] = 0
        i += 1
    aligned = int(uint(buf) & uint(3)) == 0
    b32 = ptr32(buf)
    i = 1
    while i < nblk:
        o = i << 4
        if aligned:
            w = o >> 2
            b32[w] = b32[0]
            b32[w + 1] = b32[1]
            b32[w + 2] = b32[2]
            b32[w + 3] = b32[3]
        else:
            k = 0
            while k < 16:
                buf[o + k] = buf[k]
                k += 1
        c = i
        p = o + 15
        while c:
            buf[p] = c & 0xFF
            c >>= 8
            p -= 1
        i += 1


@micropython.viper
def _mac_head(buf: ptr8, flags: int, nonce: ptr8, nlen: int, q: int, aad: ptr8, a: int, h: int,
              chain: ptr8):
    # The MAC input up to the payload (RFC 3610 section 2.2): B_0 = flags ||
    # nonce || q (q = message length, big-endian in the 15 - nlen bytes left),
    # then if a > 0: l(a) || aad, zero padded to h. l(a) is 2 bytes below
    # 0xFF00, else 0xFFFE and 4 bytes (the caller refuses a >= 2**32).
    # B_0 is XORed with chain, the CBC object's current IV (CCM._prepare).
    if a:
        flags |= 0x40
    buf[0] = flags
    i = 0
    while i < nlen:
        buf[1 + i] = nonce[i]
        i += 1
    p = 15
    while p > nlen:
        buf[p] = q & 0xFF
        q >>= 8
        p -= 1
    i = 0
    while i < 16:
        buf[i] ^= chain[i]
        i += 1
    if a == 0:
        return
    if uint(a) < uint(0xFF00):
        buf[16] = a >> 8
        buf[17] = a & 0xFF
        p = 18
    else:
        buf[16] = 0xFF
        buf[17] = 0xFE
        buf[18] = uint(a) >> 24
        buf[19] = (a >> 16) & 0xFF
        buf[20] = (a >> 8) & 0xFF
        buf[21] = a & 0xFF
        p = 22
    i = 0
    while i < a:
        buf[p + i] = aad[i]
        i += 1
    p += a
    while p < h:
        buf[p] = 0
        p += 1


@micropython.viper
def _load_xor(mac: ptr8, h: int, end: int, out: ptr8, off: int, src: ptr8, ks: ptr8, n: int) -> int:
    # One pass over the payload: mac[h:h+n] = src (the CBC-MAC input), zero
    # padded to end, and the CTR output src ^ S_1.. goes to out[off:off+n].
    # Word-wise when src and out are aligned. When only out is not (a COSE
    # header of odd length puts the ciphertext at an odd offset), the output
    # goes word-wise over the keystream in ks instead and 1 is returned: the
    # caller then copies it with one memcpy, which beats a byte loop here.
    m = uint(mac) + uint(h)
    k = uint(ks) + uint(16)
    o = uint(out) + uint(off)
    s = uint(src)
    m8 = ptr8(m)
    k8 = ptr8(k)
    o8 = ptr8(o)
    s8 = ptr8(s)
    moved = 0
    i = 0
    if int((m | k | s) & uint(3)) == 0:
        m32 = ptr32(m)
        k32 = ptr32(k)
        s32 = ptr32(s)
        w = n >> 2
        if int(o & uint(3)) == 0:
            o32 = ptr32(o)
            while i < w:
                x = s32[i]
                m32[i] = x
                o32[i] = x ^ k32[i]
                i += 1
        else:
            moved = 1
            while i < w:
                x = s32[i]
                m32[i] = x
                k32[i] = x ^ k32[i]
                i += 1
            o8 = k8
        i = w << 2
    while i < n:
        x = s8[i]
        m8[i] = x
        o8[i] = x ^ k8[i]
        i += 1
    end -= h
    while i < end:
        m8[i] = 0
        i += 1
    return moved


class CCM:
    """AES-CCM with a fixed key, tag length and nonce length.

    Keeps its key schedules and work buffers across messages: for more than
    one message under a key, keep the object. Not for concurrent use: no call
    yields, so asyncio tasks sharing one object are fine, threads are not.
    """

    def __init__(self, key, tag_len=8, nonce_len=13):
        kl = len(key)
        if kl != 16 and kl != 32:
            # 24-byte keys are valid AES, but cryptolib has no AES-192.
            raise ValueError("ccm key must be 16 or 32 bytes")
        if nonce_len < 7 or nonce_len > 13:
            raise ValueError("ccm nonce length")
        if tag_len < 4 or tag_len > 16 or tag_len & 1:
            raise ValueError("ccm tag length")
        self._key = bytes(key)
        self._ecb = cryptolib.aes(self._key, _ECB)
        # The CBC-MAC must start from a zero IV, but a cryptolib CBC object
        # carries its last ciphertext block over as the next IV. Rather than
        # a new object (a key schedule) per message, keep one and cancel the
        # carried IV: B_0 is XORed with it (chain) before the pass, so the
        # first block is E(B_0) as with a zero IV. _chain_ok is False only
        # while a pass is in flight; if an exception ever lands there, the
        # next message starts over with a fresh object.
        self._cbc = cryptolib.aes(self._key, _CBC, _ZERO)
        self._chain = bytearray(_BLK)
        self._chain_ok = True
        self.tag_len = tag_len
        self.nonce_len = nonce_len
        # B_0 flags without Adata: M' = (t-2)/2 in bits 3..5 and L' = L-1 in
        # bits 0..2, L = 15 - nonce_len being the size of the length field
        # (RFC 3610 section 2.2).
        self._flags = ((tag_len - 2) << 2) | (14 - nonce_len)
        # The length must fit the L-byte field (and a viper int: nothing near
        # 2**30 bytes fits in a device's RAM anyway).
        self._max_len = min((1 << (8 * (15 - nonce_len))) - 1, _MAX_LEN)
        # Work buffers, grown to the longest message seen, and exact-size
        # views of them for the cryptolib calls (remade when the size changes,
        # so same-size messages, the usual case, allocate nothing here).
        self._ks = bytearray(0)
        self._mac = bytearray(0)
        self._ksv = memoryview(self._ks)
        self._macv = memoryview(self._mac)

    def _prepare(self, nonce, aad, n):
        # Everything but the payload, for an n-byte message: runs the CTR pass
        # (S_0..S_m into self._ks) and writes B_0 || AAD blocks to self._mac.
        # Returns h, the offset of the payload in self._mac.
        nl = self.nonce_len
        if len(nonce) != nl:
            raise ValueError("ccm nonce length")
        if n > self._max_len:
            raise ValueError("ccm message too long for nonce length")
        a = len(aad)
        if a > _MAX_LEN:
            raise ValueError("ccm aad too long")
        m16 = (n + _BLK - 1) & ~(_BLK - 1)
        # B_0, then l(a) (2 bytes, or 6 from 0xFF00 on) || a, padded.
        h = _BLK + ((a + (2 if a < 0xFF00 else 6) + _BLK - 1) & ~(_BLK - 1)) if a else _BLK
        k = m16 + _BLK
        if len(self._ksv) != k:
            if len(self._ks) < k:
                self._ks = bytearray(k)
            self._ksv = memoryview(self._ks)[:k]
        k = h + m16
        if len(self._macv) != k:
            if len(self._mac) < k:
                self._mac = bytearray(k)
            self._macv = memoryview(self._mac)[:k]
        v = self._ksv
        _ctr_blocks(v, (m16 >> 4) + 1, nonce, nl)
        self._ecb.encrypt(v, v)
        if not self._chain_ok:
            self._cbc = cryptolib.aes(self._key, _CBC, _ZERO)
            self._chain = bytearray(_BLK)
            self._chain_ok = True
        _mac_head(self._macv, self._flags, nonce, nl, n, aad, a, h, self._chain)
        return h

    def reserve(self, n, aad_len=0):
        """Grows the work buffers for n-byte messages with aad_len bytes of
        AAD now (say, on a freshly collected heap) rather than at the first
        message of that size. The MAC buffer holds B_0, the AAD blocks and
        the payload: reserved without the AAD it is one AAD's blocks short,
        and the first full message allocates it again (an update's first
        full 4 KiB chunk asked a long-used heap for a new 4 KiB block and
        was refused: no_memory)."""
        self._prepare(bytes(self.nonce_len), bytes(aad_len), n)

    def encrypt_into(self, nonce, aad, pt, out, off=0):
        """Writes ciphertext || tag (len(pt) + tag_len bytes) to out[off:]."""
        n = len(pt)
        t = self.tag_len
        if off < 0 or len(out) - off < n + t:
            raise ValueError("ccm output buffer too small")
        h = self._prepare(nonce, aad, n)
        ks = self._ksv
        mac = self._macv
        if _load_xor(mac, h, len(mac), out, off, pt, ks, n):
            out[off:off + n] = ks[_BLK:_BLK + n]
        # CBC-MAC in place: T is the last block of the CBC output.
        self._chain_ok = False
        self._cbc.encrypt(mac, mac)
        _tag_out(out, off + n, mac, len(mac) - _BLK, ks, t, self._chain)
        self._chain_ok = True

    def encrypt(self, nonce, aad, pt):
        """-> ciphertext || tag (bytes)."""
        if len(pt) > self._max_len:
            raise ValueError("ccm message too long for nonce length")
        out = bytearray(len(pt) + self.tag_len)
        self.encrypt_into(nonce, aad, pt, out)
        return bytes(out)

    def decrypt_into(self, nonce, aad, data, out):
        """data = ciphertext || tag. Writes the plaintext to the start of out
        and returns its length, or raises AuthError. out is written only after
        the tag has been checked."""
        t = self.tag_len
        n = len(data) - t
        if n < 0:
            raise AuthError("ccm message shorter than its tag")
        if len(out) < n:
            raise ValueError("ccm output buffer too small")
        h = self._prepare(nonce, aad, n)
        ks = self._ksv
        mac = self._macv
        # The MAC covers the plaintext, so decrypt into the MAC buffer first;
        # ks keeps the keystream to decrypt again into out once authentic.
        _xor3(mac, h, data, 0, ks, _BLK, n)
        _zero(mac, h + n, len(mac) - h - n)
        self._chain_ok = False
        self._cbc.encrypt(mac, mac)
        bad = _tag_diff(mac, len(mac) - _BLK, ks, data, n, t, self._chain)
        self._chain_ok = True
        if bad:
            raise AuthError("ccm tag mismatch")
        _xor3(out, 0, data, 0, ks, _BLK, n)
        return n

    def decrypt(self, nonce, aad, data):
        """data = ciphertext || tag -> plaintext (bytes), or raises AuthError."""
        n = len(data) - self.tag_len
        out = bytearray(n if n > 0 else 0)
        self.decrypt_into(nonce, aad, data, out)
        return bytes(out)


def encrypt(key, nonce, aad, pt, tag_len=8):
    """AES-CCM encrypt -> ciphertext || tag. Nonce 7..13 bytes, tag 4..16 even."""
    return CCM(key, tag_len, len(nonce)).encrypt(nonce, aad, pt)


def decrypt(key, nonce, aad, data, tag_len=8):
    """AES-CCM decrypt of ciphertext || tag -> plaintext, or raises AuthError."""
    return CCM(key, tag_len, len(nonce)).decrypt(nonce, aad, data)
