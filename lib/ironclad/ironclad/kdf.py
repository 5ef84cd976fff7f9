# HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869) and a constant-time compare.
#
# Everything runs over hashlib.sha256, which is C on every port. MicroPython's
# sha256 objects have no copy(), so the padded keys are computed once per key
# (_pads) and fed to a fresh hash each time; that is the part worth caching when
# one key MACs many messages (HKDF-Expand does).
from micropython import const
import hashlib

_BLOCK = const(64)  # SHA-256 block size: longer HMAC keys are hashed first
_HASH_LEN = const(32)
# RFC 5869 section 2.3: L <= 255 * HashLen, because the block counter is one byte.
_HKDF_MAX = const(8160)

_IPAD = const(0x36)
_OPAD = const(0x5C)


def ct_equal(a, b):
    """True if a == b, in time that depends only on the lengths.

    For tags and MACs: an early-exit compare tells an attacker how many leading
    bytes of a forged tag were right. The lengths themselves are public (tag sizes
    are fixed by the protocol), so a length mismatch returns at once.
    """
    n = len(a)
    if n != len(b):
        return False
    acc = 0
    for i in range(n):
        acc |= a[i] ^ b[i]
    return acc == 0


def _pads(key):
    # Returns the (inner, outer) padded keys of RFC 2104.
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(len(key)):
        ipad[i] = key[i]
        opad[i] = key[i]
    for i in range(_BLOCK):
        ipad[i] ^= _IPAD
        opad[i] ^= _OPAD
    return ipad, opad


def _mac(ipad, opad, *parts):
    h = hashlib.sha256(ipad)
    for p in parts:
        h.update(p)
    o = hashlib.sha256(opad)
    o.update(h.digest())
    return o.digest()


def hmac_sha256(key, msg):
    """HMAC-SHA256(key, msg) -> 32 bytes. Any key length (RFC 2104)."""
    ipad, opad = _pads(key)
    return _mac(ipad, opad, msg)


class HmacSha256:
    """One key, many messages: the padded keys are computed once."""

    def __init__(self, key):
        self._ipad, self._opad = _pads(key)

    def mac(self, *parts):
        """HMAC over the concatenation of parts, without concatenating them."""
        return _mac(self._ipad, self._opad, *parts)


def hkdf_extract(salt, ikm):
    """HKDF-Extract: PRK = HMAC(salt, IKM). No salt means HashLen zero bytes,
    which as an HMAC key is the same as the empty key (both pad to zeros)."""
    return hmac_sha256(salt or b"", ikm)


def hkdf_expand(prk, info, length):
    """HKDF-Expand: OKM of `length` bytes. Raises ValueError past 255 blocks."""
    if length < 0 or length > _HKDF_MAX:
        raise ValueError("hkdf length")
    if len(prk) < _HASH_LEN:
        # RFC 5869 asks for a PRK of at least HashLen bytes. Wycheproof runs
        # Extract first, so this only stops a caller passing raw short IKM here.
        raise ValueError("hkdf prk too short")
    mac = HmacSha256(prk)
    out = bytearray(length)
    t = b""
    ctr = bytearray(1)
    pos = 0
    i = 1
    while pos < length:
        ctr[0] = i
        t = mac.mac(t, info, ctr)
        k = min(_HASH_LEN, length - pos)
        out[pos:pos + k] = t[:k] if k < _HASH_LEN else t
        pos += k
        i += 1
    return bytes(out)


def hkdf(ikm, salt, info, length):
    """HKDF-SHA256 (RFC 5869): Extract then Expand."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
