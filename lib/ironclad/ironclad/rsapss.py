# RSASSA-PSS signature verification (RFC 8017, sections 8.1.2 and 9.1.2).
#
# This is the check verified boot runs on every image, so it is fixed to the
# ESP32 Secure Boot V2 parameters: SHA-256 for the message hash and for MGF1,
# and a salt of exactly 32 bytes. The caller hashes the message (it may be
# streamed from flash) and passes the 32-byte digest.
#
# Error model: a signature that does not verify, for any reason, gives False;
# nothing an attacker controls in the signature makes verify() raise. A caller
# mistake (wrong argument types, a digest that is not 32 bytes, a key outside
# the supported range) raises ValueError, so a wiring bug is loud instead of
# looking like a bad image.
#
# Memory: one 3072-bit verification allocates about 6 KiB of GC heap in all
# and needs under 4 KiB live at its peak (measured on the unix port). The
# modular exponentiation is the bulk of it; the padding check works on one
# bytearray the size of the encoded message, XORs the MGF1 mask into it in
# place and never builds lists or a separate mask buffer.
from micropython import const
import hashlib

_HLEN = const(32)  # SHA-256 digest size, hLen in RFC 8017
_SLEN = const(32)  # salt length Secure Boot V2 signs with; anything else is rejected
_TRAILER = const(0xBC)  # trailer field of EM (RFC 8017 9.1.1 step 12)
# Key size bounds. Below 2048 bits RSA is not a boot-grade key; above 4096
# the exponentiation gets slow and heap-hungry on an ESP32, and no key the
# device accepts is that large. Checking them also bounds len(sig).
_MIN_MOD_BITS = const(2048)
_MAX_MOD_BITS = const(4096)
_MAX_MOD_BYTES = const(512)  # _MAX_MOD_BITS // 8

_ZEROS8 = b"\x00" * 8  # the eight zero bytes M' starts with (RFC 8017 9.1.2 step 12)


def int_from_bytes(b):
    """OS2IP: big-endian bytes -> non-negative int."""
    return int.from_bytes(b, "big")


def int_to_bytes(x, length):
    """I2OSP: non-negative int -> big-endian bytes of exactly `length`.
    Raises OverflowError if x does not fit, as I2OSP's "integer too large"."""
    return x.to_bytes(length, "big")


def _bit_length(x):
    # MicroPython ints have no bit_length(). Write x into a fixed-size buffer
    # (bounded by the largest key we accept) and count from the first
    # non-zero byte. Only called on the public modulus.
    b = x.to_bytes(_MAX_MOD_BYTES, "big")  # OverflowError if above 4096 bits
    for i in range(_MAX_MOD_BYTES):
        top = b[i]
        if top:
            bits = (_MAX_MOD_BYTES - 1 - i) * 8
            while top:
                bits += 1
                top >>= 1
            return bits
    return 0


def _is_buffer(x):
    return isinstance(x, (bytes, bytearray, memoryview))


def _check_key(n, e):
    # Returns modBits. Everything here depends only on the key. In Secure
    # Boot V2 the key travels in the signature block and the caller must
    # first match its SHA-256 against the digest burnt in eFuse; after that
    # the key is trusted, so a failure here is a caller error, not a bad
    # signature. (Called on an unchecked key it still only raises or rejects.)
    if not isinstance(n, int) or not isinstance(e, int):
        raise ValueError("rsapss: n and e must be int")
    if n <= 0 or not n & 1:
        raise ValueError("rsapss: modulus must be a positive odd integer")
    try:
        mod_bits = _bit_length(n)
    except OverflowError:
        raise ValueError("rsapss: modulus above %d bits" % _MAX_MOD_BITS)
    if mod_bits < _MIN_MOD_BITS:
        raise ValueError("rsapss: modulus below %d bits" % _MIN_MOD_BITS)
    # e must be an odd public exponent smaller than n (RFC 8017 3.1); e=1
    # would make every s a valid "signature" of its own padding.
    if e < 3 or not e & 1 or e >= n:
        raise ValueError("rsapss: bad public exponent")
    return mod_bits


def key_bytes(n, e):
    """k, the signature length in octets for the key (n, e); ValueError if the
    key is outside what verify() accepts."""
    return (_check_key(n, e) + 7) >> 3


def verify(n, e, mhash, sig):
    """RSASSA-PSS-VERIFY with SHA-256, MGF1-SHA256 and a 32-byte salt.

    n, e: public key as ints. mhash: the 32-byte SHA-256 digest of the
    message. sig: the signature (bytes-like). Returns True if the signature
    is valid, False otherwise. Raises ValueError only for bad arguments.
    """
    mod_bits = _check_key(n, e)
    if not _is_buffer(mhash) or len(mhash) != _HLEN:
        raise ValueError("rsapss: mhash must be a 32-byte SHA-256 digest")
    if not _is_buffer(sig):
        raise ValueError("rsapss: sig must be bytes-like")

    # RFC 8017 8.1.2 step 1: the signature is exactly k octets. A shorter or
    # longer one is not a signature under this key (no leading-zero leniency).
    k = (mod_bits + 7) >> 3
    if len(sig) != k:
        return False

    # Step 2a-2b, RSAVP1: s must be a representative below n; otherwise
    # s and s + n would both "verify" (signature malleability).
    s = int.from_bytes(sig, "big")
    if s >= n:
        return False
    m = pow(s, e, n)
    s = None  # let the GC have it back during the padding check

    # Step 2c: EM = I2OSP(m, emLen) with emBits = modBits - 1. emLen is k,
    # or k - 1 when modBits is 1 mod 8; then the top octet of m written on k
    # bytes must be zero, or I2OSP would fail ("integer too large").
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) >> 3
    em = bytearray(m.to_bytes(k, "big"))  # m < n < 256**k always fits
    m = None
    off = k - em_len  # index of EM's first octet inside em
    if off and em[0]:
        return False
    return _emsa_pss_verify(mhash, em, off, em_len, em_bits)


def _emsa_pss_verify(mhash, em, off, em_len, em_bits):
    # EMSA-PSS-VERIFY, RFC 8017 9.1.2, on EM = em[off:off + em_len].
    # Step 3: room for DB = PS || 0x01 || salt and H || 0xbc. Always true for
    # keys of 2048 bits and more, kept because the RFC requires it.
    if em_len < _HLEN + _SLEN + 2:
        return False
    end = off + em_len
    # Step 4: the trailer octet.
    if em[end - 1] != _TRAILER:
        return False
    db_len = em_len - _HLEN - 1  # maskedDB is EM's first db_len octets, H follows
    h_at = off + db_len
    # Step 6: the bits of EM above emBits must be zero. The signer cleared
    # them so that EM < n; a forged EM with them set is not a PSS encoding.
    top_mask = 0xFF >> (8 * em_len - em_bits)  # bits of EM[0] that belong to emBits
    if em[off] & ~top_mask & 0xFF:
        return False

    # Steps 7-8: DB = maskedDB XOR MGF1(H, db_len), XORed into em in place.
    # MGF1 block i is SHA-256(H || I2OSP(i, 4)); the 36-byte seed buffer is
    # allocated once and only its counter octet changes (db_len is at most
    # 479 for a 4096-bit key, so at most 15 blocks: the counter's top three
    # octets stay zero).
    seed = bytearray(_HLEN + 4)
    seed[:_HLEN] = memoryview(em)[h_at:h_at + _HLEN]
    pos = off
    counter = 0
    while pos < h_at:
        seed[_HLEN + 3] = counter
        block = hashlib.sha256(seed).digest()
        j = 0
        while j < _HLEN and pos < h_at:
            em[pos] ^= block[j]
            pos += 1
            j += 1
        counter += 1

    # Step 9: clear the bits above emBits in DB, as the signer did.
    em[off] &= top_mask

    # Step 10: DB = PS (zeros) || 0x01 || salt. With sLen fixed, the 0x01
    # must sit at exactly this position: a longer or shorter salt, or any
    # non-zero padding octet, is rejected (this is what stops the
    # "ModifiedSignature" padding tricks).
    one_at = off + db_len - _SLEN - 1
    for i in range(off, one_at):
        if em[i]:
            return False
    if em[one_at] != 0x01:
        return False

    # Steps 11-14: H' = SHA-256(0x00 * 8 || mHash || salt) must equal H.
    # This is the check that ties the signature to mHash; everything above
    # only checked the shape of the encoding. Timing need not be constant:
    # everything compared is public.
    h = hashlib.sha256(_ZEROS8)
    h.update(mhash)
    h.update(memoryview(em)[one_at + 1:h_at])
    return h.digest() == em[h_at:h_at + _HLEN]
