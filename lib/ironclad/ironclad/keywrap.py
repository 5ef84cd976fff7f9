# AES key wrap (RFC 3394; NIST SP 800-38F "KW") over cryptolib AES-ECB.
#
# Wrap runs 6 * n single-block AES calls for n 64-bit key blocks, each depending
# on the previous one, so the loop is inherently per block: an AES-128 or -256
# key is 2 or 4 blocks, 12 or 24 AES calls. One 16-byte buffer holds A || R[i]
# and is encrypted in place, so the loop allocates nothing but slice views.
#
# Only RFC 3394 proper: at least two 64-bit blocks. An 8-byte key (n = 1) needs
# the RFC 5649 padded variant, which is a different algorithm; refusing it is
# the behaviour Wycheproof marks acceptable.
from micropython import const
import cryptolib
from ironclad.kdf import ct_equal

_ECB = const(1)
# KEKs are 128- or 256-bit: cryptolib has no AES-192. The upper bound on the
# wrapped data keeps a hostile length from costing unbounded AES rounds (6 per
# 8 bytes); 512 bytes is far above any symmetric key and still lets t pass 255,
# where a one-byte counter XOR would go wrong.
_MAX_KEY = const(512)

DEFAULT_IV = b"\xa6\xa6\xa6\xa6\xa6\xa6\xa6\xa6"


class UnwrapError(ValueError):
    """Integrity check failed: wrong KEK, or the wrapped key was modified."""


def _aes(kek):
    # A fresh object per call: a cryptolib object is either encrypting or
    # decrypting, never both.
    kl = len(kek)
    if kl != 16 and kl != 32:
        raise ValueError("keywrap kek must be 16 or 32 bytes")
    return cryptolib.aes(kek, _ECB)


def _xor_t(blk, t):
    # A ^= t, t as a 64-bit big-endian integer in blk[0:8].
    p = 7
    while t:
        blk[p] ^= t & 0xFF
        t >>= 8
        p -= 1


def wrap(kek, key, iv=DEFAULT_IV):
    """Wrap `key` (16..512 bytes, a multiple of 8) under `kek` -> len(key) + 8 bytes."""
    kl = len(key)
    if kl < 16 or kl > _MAX_KEY or kl & 7:
        raise ValueError("keywrap key length")
    if len(iv) != 8:
        raise ValueError("keywrap iv length")
    aes = _aes(kek)
    n = kl >> 3
    r = bytearray(key)
    rv = memoryview(r)
    blk = bytearray(16)
    bv = memoryview(blk)
    blk[0:8] = iv
    t = 1
    for _ in range(6):
        for i in range(n):
            o = i << 3
            bv[8:16] = rv[o:o + 8]
            aes.encrypt(blk, blk)
            _xor_t(blk, t)
            rv[o:o + 8] = bv[8:16]
            t += 1
    return bytes(blk[0:8]) + bytes(r)


def unwrap(kek, wrapped, iv=DEFAULT_IV):
    """Unwrap -> the key (len(wrapped) - 8 bytes), or raise UnwrapError."""
    wl = len(wrapped)
    if wl < 24 or wl > _MAX_KEY + 8 or wl & 7:
        # A length no wrap() output can have: as much an integrity failure
        # as a bad IV, so the caller sees one exception type.
        raise UnwrapError("keywrap wrapped length")
    if len(iv) != 8:
        raise ValueError("keywrap iv length")
    aes = _aes(kek)
    n = (wl >> 3) - 1
    w = memoryview(wrapped)
    r = bytearray(w[8:])
    rv = memoryview(r)
    blk = bytearray(16)
    bv = memoryview(blk)
    bv[0:8] = w[0:8]
    t = 6 * n
    for _ in range(6):
        for i in range(n - 1, -1, -1):
            o = i << 3
            _xor_t(blk, t)
            bv[8:16] = rv[o:o + 8]
            aes.decrypt(blk, blk)
            rv[o:o + 8] = bv[8:16]
            t -= 1
    if not ct_equal(bv[0:8], iv):
        # Do not leave the would-be key lying in a buffer the caller never sees.
        for i in range(len(r)):
            r[i] = 0
        raise UnwrapError("keywrap integrity check failed")
    return bytes(r)
