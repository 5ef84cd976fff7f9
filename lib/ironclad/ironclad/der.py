# Minimal DER (X.690 distinguished encoding): the encoders a CSR and a SEC1
# key need, and a bounded, strict decoder for the two things the device parses
# from outside: ECDSA signatures and P-256 SubjectPublicKeyInfo.
#
# The decoder accepts only DER, not BER: single-byte tags, definite minimal
# lengths, minimal non-negative INTEGERs, nothing trailing. Accepting BER
# variants is how signature malleability and parser differentials start
# (Wycheproof's BerEncodedSignature and InvalidAsn cases). Every length is
# checked against the bytes that are really there before anything is sliced.
from micropython import const

_INTEGER = const(0x02)
_BIT_STRING = const(0x03)
_OCTET_STRING = const(0x04)
_NULL = const(0x05)
_OID = const(0x06)
_UTF8_STRING = const(0x0C)
_PRINTABLE_STRING = const(0x13)
_SEQUENCE = const(0x30)
_SET = const(0x31)

# Lengths above 64 KiB never occur in what this device parses; refusing them
# keeps a hostile length field from meaning anything (2 length bytes at most).
_MAX_LEN_BYTES = const(2)

# A P-256 ECDSA signature: SEQUENCE of two INTEGERs of at most 33 bytes
# (32 plus a 0x00 for a set top bit): 2 + 2 * (2 + 33) = 72 bytes.
_MAX_SIG = const(72)

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_PRIME256V1 = "1.2.840.10045.3.1.7"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_COMMON_NAME = "2.5.4.3"


# --- encoding ---------------------------------------------------------------


def _length(n):
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    raise ValueError("DER value too long")


def tlv(tag, content):
    """One element: tag byte, minimal length, content."""
    return bytes((tag,)) + _length(len(content)) + content


def integer(v):
    """INTEGER of a non-negative int, minimal two's complement."""
    if v < 0:
        raise ValueError("negative INTEGER not supported")
    # Bytes needed for the value plus a sign bit: one extra byte when the top
    # bit of the value is set, so the encoding stays positive.
    n = 1
    while v >> (8 * n - 1):
        n += 1
    return tlv(_INTEGER, v.to_bytes(n, "big"))


def sequence(*items):
    return tlv(_SEQUENCE, b"".join(items))


def set_of(*items):
    # DER orders SET OF members by their encoding.
    return tlv(_SET, b"".join(sorted(items)))


def oid(dotted):
    """OBJECT IDENTIFIER from "1.2.840..." form."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError("bad OID")
    out = b""
    for a in [arcs[0] * 40 + arcs[1]] + arcs[2:]:
        # base 128, most significant group first, high bit set on all but the last
        chunk = bytes((a & 0x7F,))
        a >>= 7
        while a:
            chunk = bytes((0x80 | (a & 0x7F),)) + chunk
            a >>= 7
        out += chunk
    return tlv(_OID, out)


def bit_string(data, unused=0):
    return tlv(_BIT_STRING, bytes((unused,)) + data)


def octet_string(data):
    return tlv(_OCTET_STRING, bytes(data))


def utf8_string(text):
    return tlv(_UTF8_STRING, text.encode("utf-8"))


def printable_string(text):
    # PrintableString's alphabet: A-Z a-z 0-9 space ' ( ) + , - . / : = ?
    for c in text:
        if not (c.isalpha() and ord(c) < 128 or c.isdigit() or c in " '()+,-./:=?"):
            raise ValueError("not a PrintableString")
    return tlv(_PRINTABLE_STRING, text.encode())


def null():
    return b"\x05\x00"


def context(n, content, constructed=True):
    """[n] tag: EXPLICIT (constructed, wraps an encoding) by default, or
    IMPLICIT primitive with constructed=False."""
    if not 0 <= n <= 30:
        raise ValueError("bad context tag")
    return tlv((0xA0 if constructed else 0x80) | n, content)


# --- decoding ---------------------------------------------------------------


def read(buf, pos, end):
    """Read one element of buf[pos:end]. Returns (tag, start, stop): the
    content is buf[start:stop] and the next element starts at stop. Raises
    ValueError for anything that is not strict DER or runs past end."""
    if end - pos < 2:
        raise ValueError("DER truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER multi-byte tag")
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        # Long form: 0x80 alone is BER's indefinite length; more bytes than
        # needed, a leading zero or a value that fits short form is not DER.
        k = n & 0x7F
        if k == 0 or k > _MAX_LEN_BYTES or end - pos < k:
            raise ValueError("DER bad length")
        n = 0
        for i in range(k):
            n = (n << 8) | buf[pos + i]
        pos += k
        if n < 0x80 or n >> (8 * (k - 1)) == 0:
            raise ValueError("DER non-minimal length")
    if n > end - pos:
        raise ValueError("DER length past end")
    return tag, pos, pos + n


def expect(buf, pos, end, tag):
    """read() that also requires the tag; returns (start, stop)."""
    t, start, stop = read(buf, pos, end)
    if t != tag:
        raise ValueError("DER unexpected tag")
    return start, stop


def read_uint(buf, pos, end, max_bytes):
    """Non-negative INTEGER of at most max_bytes content bytes; returns
    (value, stop)."""
    start, stop = expect(buf, pos, end, _INTEGER)
    n = stop - start
    if n == 0 or n > max_bytes:
        raise ValueError("DER bad INTEGER size")
    if buf[start] & 0x80:
        raise ValueError("DER negative INTEGER")
    # A leading 0x00 is allowed only to keep a set top bit positive.
    if n > 1 and buf[start] == 0 and not buf[start + 1] & 0x80:
        raise ValueError("DER non-minimal INTEGER")
    return int.from_bytes(bytes(buf[start:stop]), "big"), stop


# --- ECDSA and keys ---------------------------------------------------------


def ecdsa_sig_encode(r, s):
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }."""
    return sequence(integer(r), integer(s))


def ecdsa_sig_decode(der):
    """(r, s) from a strict-DER P-256 ECDSA signature; ValueError otherwise.
    Range checks (0 < r, s < n) are the verifier's job."""
    end = len(der)
    if end > _MAX_SIG:
        raise ValueError("DER signature too long")
    start, stop = expect(der, 0, end, _SEQUENCE)
    if stop != end:
        raise ValueError("DER trailing data")
    r, pos = read_uint(der, start, stop, 33)
    s, pos = read_uint(der, pos, stop, 33)
    if pos != stop:
        raise ValueError("DER trailing data")
    return r, s


def _alg_id():
    return sequence(oid(OID_EC_PUBLIC_KEY), oid(OID_PRIME256V1))


def spki_p256_encode(pub):
    """SubjectPublicKeyInfo for an uncompressed P-256 point."""
    if len(pub) != 65 or pub[0] != 4:
        raise ValueError("invalid public key")
    return sequence(_alg_id(), bit_string(bytes(pub)))


def spki_p256_decode(der):
    """The 65-byte point from a P-256 SubjectPublicKeyInfo. Only the named-curve
    form with id-ecPublicKey and prime256v1 and an uncompressed point is
    accepted: explicit curve parameters are refused (they are how
    invalid-curve keys get smuggled in) and compressed points are not
    supported. The point itself is validated by p256, not here."""
    end = len(der)
    start, stop = expect(der, 0, end, _SEQUENCE)
    if stop != end:
        raise ValueError("DER trailing data")
    a, b = expect(der, start, stop, _SEQUENCE)
    # The AlgorithmIdentifier must be exactly these bytes: DER is unique.
    alg = _alg_id()
    if bytes(der[start:b]) != alg:
        raise ValueError("not a P-256 public key")
    a, b2 = expect(der, b, stop, _BIT_STRING)
    if b2 != stop:
        raise ValueError("DER trailing data")
    if b2 - a != 66 or der[a] != 0 or der[a + 1] != 4:
        raise ValueError("unsupported public key encoding")
    return bytes(der[a + 1:b2])


def ec_private_key_der(d, pub):
    """SEC1 (RFC 5915) ECPrivateKey, as mbedTLS parses it:
    SEQUENCE { version 1, privateKey OCTET STRING (32 bytes),
    [0] parameters prime256v1, [1] publicKey BIT STRING }."""
    if len(d) != 32:
        raise ValueError("invalid private key")
    if len(pub) != 65 or pub[0] != 4:
        raise ValueError("invalid public key")
    return sequence(
        integer(1),
        octet_string(d),
        context(0, oid(OID_PRIME256V1)),
        context(1, bit_string(bytes(pub))),
    )
