# AES-CCM (RFC 3610, NIST SP 800-38C) over cryptolib.
#
# cryptolib has AES-ECB and AES-CBC only, but CCM needs nothing else:
#   * CTR: the keystream S_i = E(A_i) is one ECB call over all counter blocks
#     A_0..A_m laid out in one buffer;
#   * CBC-MAC: the MAC is the last block of a CBC encryption (IV 0) of
#     B_0 || encoded AAD || payload, so it is one CBC call over one buffer.
# Both passes therefore run in C over the whole message. The per-byte work that
# is left (filling the counter blocks, XOR of keystream and data) is done by two
# small viper functions, 32 bits at a time, so no Python loop runs per byte or per
# block. Everything else is a fixed number of Python steps per message.
#
# Buffers: a CCM object keeps its two work buffers (keystream, MAC input) and
# grows them only when a longer message comes; data is copied in with slice
# assignment (memcpy), so the XOR always runs on word-aligned internal memory
# whatever alignment the caller's memoryviews have (the ESP32 faults on an
# unaligned 32-bit load).
#
# Key sizes: 128 and 256 bits. cryptolib rejects 192-bit keys (its key schedule
# is the axTLS/mbedTLS wrapper restricted to 16 and 32 bytes), so AES-192-CCM is
# not offered rather than emulated in Python.
from micropython import const
import micropython
import cryptolib

_ECB = const(1)
_CBC = const(2)
_BLK = const(16)

_ZERO = bytes(16)


class AuthError(ValueError):
    """The tag did not match: the message was forged, corrupted, or the key,
    nonce or AAD differ from the sender's. No plaintext is released."""


@micropython.viper
def _xor(dst: ptr8, doff: int, src: ptr8, soff: int, n: int):
    # dst[doff:doff+n] ^= src[soff:soff+n]; words when both ends are aligned.
    d = uint(dst) + uint(doff)
    s = uint(src) + uint(soff)
    i = 0
    if int((d | s) & uint(3)) == 0:
        d32 = ptr32(d)
        s32 = ptr32(s)
        w = n >> 2
        while i < w:
            d32[i] ^= s32[i]
            i += 1
        i = w << 2
    d8 = ptr8(d)
    s8 = ptr8(s)
    while i < n:
        d8[i] ^= s8[i]
        i += 1


@micropython.viper
def _counters(buf: ptr8, nblk: int, clen: int):
    # Block 0 of buf holds A_0 (flags, nonce, counter field all zero). Write
    # A_1..A_(nblk-1): a copy of A_0 with i big-endian in the last clen bytes.
    # Callers keep i < 2**(8*clen) (the message length check), so no counter
    # ever wraps into the nonce.
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


def _grow(buf, size):
    # Work buffers only grow: a device sends messages of similar size, so after
    # the first message there is no allocation here.
    if len(buf) >= size:
        return buf
    return bytearray((size + _BLK - 1) & ~(_BLK - 1))


class CCM:
    """AES-CCM with a fixed key, tag length and nonce length.

    Keeps the ECB key schedule and the work buffers across messages. Not safe
    to share between threads or coroutines that interleave inside one call (no
    call yields, so asyncio tasks are fine).
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
        self.tag_len = tag_len
        self.nonce_len = nonce_len
        # L: size of the length field, and of the counter in A_i.
        self._L = 15 - nonce_len
        self._max_len = (1 << (8 * self._L)) - 1
        self._ks = bytearray(0)
        self._mac = bytearray(0)

    def _keystream(self, nonce, m):
        # S_0..S_m into self._ks; returns the buffer.
        size = (m + 1) << 4
        ks = self._ks = _grow(self._ks, size)
        L = self._L
        ks[0] = L - 1
        ks[1:16 - L] = nonce
        ks[16 - L:16] = _ZERO[:L]
        _counters(ks, m + 1, L)
        v = memoryview(ks)[:size]
        self._ecb.encrypt(v, v)
        return ks

    def _mac_input(self, nonce, aad, n):
        # B_0 and the AAD blocks into self._mac, room for the padded payload
        # after them. Returns (buffer, h): the payload goes at offset h.
        a = len(aad)
        if a == 0:
            e = 0
        elif a < 0xFF00:
            e = 2
        elif a < 0x100000000:
            e = 6
        else:
            raise ValueError("ccm aad too long")
        h = _BLK + ((e + a + _BLK - 1) & ~(_BLK - 1))
        mac = self._mac = _grow(self._mac, h + ((n + _BLK - 1) & ~(_BLK - 1)))
        L = self._L
        # B_0 flags: Adata, M' = (t-2)/2, L' = L-1 (RFC 3610 section 2.2).
        mac[0] = (0x40 if a else 0) | ((self.tag_len - 2) << 2) | (L - 1)
        mac[1:16 - L] = nonce
        q = n
        for i in range(15, 15 - L, -1):
            mac[i] = q & 0xFF
            q >>= 8
        if a:
            if e == 2:
                mac[16] = a >> 8
                mac[17] = a & 0xFF
            else:
                mac[16] = 0xFF
                mac[17] = 0xFE
                mac[18] = a >> 24
                mac[19] = (a >> 16) & 0xFF
                mac[20] = (a >> 8) & 0xFF
                mac[21] = a & 0xFF
            p = _BLK + e
            mac[p:p + a] = aad
            mac[p + a:h] = _ZERO[:h - p - a]
        return mac, h

    def _check(self, nonce, n):
        if len(nonce) != self.nonce_len:
            raise ValueError("ccm nonce length")
        if n > self._max_len:
            raise ValueError("ccm message too long for nonce length")

    def _tag(self, mac, end, ks):
        # CBC-MAC of mac[:end] with a fresh zero IV, in place; T = last block.
        # The tag is T xor S_0, left in mac[end-16:end-16+tag_len].
        v = memoryview(mac)[:end]
        cryptolib.aes(self._key, _CBC, _ZERO).encrypt(v, v)
        _xor(mac, end - _BLK, ks, 0, self.tag_len)
        return v[end - _BLK:end - _BLK + self.tag_len]

    def encrypt_into(self, nonce, aad, pt, out):
        """Writes ciphertext || tag (len(pt) + tag_len bytes) to out[0:...].
        out may be a memoryview into a larger message buffer."""
        n = len(pt)
        self._check(nonce, n)
        if len(out) < n + self.tag_len:
            raise ValueError("ccm output buffer too small")
        m = (n + _BLK - 1) >> 4
        ks = self._keystream(nonce, m)
        mac, h = self._mac_input(nonce, aad, n)
        end = h + (m << 4)
        mac[h:h + n] = pt
        mac[h + n:end] = _ZERO[:end - h - n]
        # CTR: ks[16:16+n] becomes the ciphertext (the plaintext stays in mac
        # for the CBC-MAC pass).
        _xor(ks, _BLK, mac, h, n)
        out[:n] = memoryview(ks)[_BLK:_BLK + n]
        out[n:n + self.tag_len] = self._tag(mac, end, ks)

    def encrypt(self, nonce, aad, pt):
        """-> ciphertext || tag (bytes)."""
        out = bytearray(len(pt) + self.tag_len)
        self.encrypt_into(nonce, aad, pt, out)
        return bytes(out)

    def decrypt_into(self, nonce, aad, data, out):
        """data = ciphertext || tag. Writes the plaintext to out[0:len(data) -
        tag_len] and returns its length, or raises AuthError; on AuthError out
        holds zeros, never unauthenticated plaintext."""
        t = self.tag_len
        n = len(data) - t
        if n < 0:
            raise AuthError("ccm message shorter than its tag")
        self._check(nonce, n)
        if len(out) < n:
            raise ValueError("ccm output buffer too small")
        m = (n + _BLK - 1) >> 4
        ks = self._keystream(nonce, m)
        mac, h = self._mac_input(nonce, aad, n)
        end = h + (m << 4)
        data = memoryview(data)
        mac[h:h + n] = data[:n]
        mac[h + n:end] = _ZERO[:end - h - n]
        _xor(mac, h, ks, _BLK, n)
        # Copy out before the in-place CBC pass overwrites it; wiped below if
        # the tag is wrong.
        out[:n] = memoryview(mac)[h:h + n]
        if not _tag_equal(self._tag(mac, end, ks), data[n:]):
            out[:n] = bytes(n)
            raise AuthError("ccm tag mismatch")
        return n

    def decrypt(self, nonce, aad, data):
        """data = ciphertext || tag -> plaintext (bytes), or raises AuthError."""
        n = len(data) - self.tag_len
        out = bytearray(n if n > 0 else 0)
        self.decrypt_into(nonce, aad, data, out)
        return bytes(out)


def _tag_equal(a, b):
    # Constant time in the tag bytes (see kdf.ct_equal); the tag length is
    # public. Kept here so ccm has no import beyond cryptolib.
    n = len(a)
    if n != len(b):
        return False
    acc = 0
    for i in range(n):
        acc |= a[i] ^ b[i]
    return acc == 0


def encrypt(key, nonce, aad, pt, tag_len=8):
    """AES-CCM encrypt -> ciphertext || tag. Nonce 7..13 bytes, tag 4..16 even."""
    return CCM(key, tag_len, len(nonce)).encrypt(nonce, aad, pt)


def decrypt(key, nonce, aad, data, tag_len=8):
    """AES-CCM decrypt of ciphertext || tag -> plaintext, or raises AuthError."""
    return CCM(key, tag_len, len(nonce)).decrypt(nonce, aad, data)
