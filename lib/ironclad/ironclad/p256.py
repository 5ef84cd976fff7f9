# NIST P-256 (secp256r1) in pure MicroPython: key generation, ECDSA with
# RFC 6979 nonces, verification and ECDH.
#
# Points are Jacobian (X, Y, Z) with x = X/Z^2, y = Y/Z^3; Z == 0 is the point at
# infinity. Field elements are plain big ints reduced with `% _P`: on MicroPython
# a 256x256-bit multiply plus reduction is one mpz call each, far cheaper than
# any Solinas reduction written in Python.
#
# Side channels: both scalar multiplications run a fixed schedule (the same
# doublings and additions, in the same order, for every scalar of the range),
# because the scalar is recoded into digits that are never zero. That removes
# the gross bit-by-bit timing leak of double-and-add. Inversions of secret
# values are blinded with a random factor (see _inv). It is not constant time:
# mpz arithmetic itself takes time that depends on the values, and table
# indexing is data dependent. Secrets are ints, which cannot be wiped.
import hashlib
from micropython import const

from ironclad import rng

# Curve: y^2 = x^3 - 3x + b over GF(p); prime order n, cofactor 1, so every
# point on the curve other than infinity is a valid public key.
_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
_N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)

# Fixed-base comb for G (signed "all digits non-zero" comb, as in Hamburg's
# Ed448-Goldilocks): 6 teeth spaced 43 bits apart cover 258 bits, enough for
# any odd scalar below 2n. Entry i is, in affine coordinates,
#   2^215 G + sum_{m=0..4} (+1 if bit m of i else -1) * 2^(43m) G.
# A scalar then costs 42 doublings and 42 mixed additions instead of ~256 and
# ~128. 32 points = 2 KiB of ints (kept in flash when the module is frozen).
# tests/device/test_p256.py recomputes the table from G and compares.
_TEETH = const(6)
_SPACING = const(43)
_GX = (
    0x16e4abe60c4b18a476fdab0db59c1ac3767855b4118be0113bd04bb679f1952d,
    0xf00e4339634a1d28a5d141bfc264423cf25f7cbc1554c3d0c803d606090d092a,
    0x79e3eb104171231534b5642ec651c52acc67d205b16b5a476fbd84f43e930576,
    0x708bb8f851fe7b8e6f854b3d9a689ef4f3c4b3b00604881cdc52945c4b2c7cb5,
    0x6b9b3919b29c56efe49da18c794b557234e6ea5553a1cabc1530c239cf725d71,
    0xa18ada01b459f28e93b364aaaf7bc52d6e03d1305d7afa38747e9845007264fe,
    0x4baf4df8ea79377ba235a26109e3787cc84449f23e5760dce3ac0eb90118e54b,
    0x6f08b1861fff9e25f969ce2bc64d7f3665e56120daea05ac23445d3fc2e859fb,
    0xbfb342fdca18b07d325408e05d5302475a9a32a5124f22d56d7c3fa77f82440c,
    0x70b6c627a25bd699d8aef3efb030547a8d2056ca61dc37f2aee513e18a93ce62,
    0x5e654fc5b099bed70a385130af2c1f8828795ff0dd62ea4082334b03f9f48df1,
    0x3b411c8b64b1f1030c24f4f30527b7def5d26dd457896e0f6afcf2a7e2a337e1,
    0xc5f3a1c3396457e841d320b78a98d39a1e96954e2757e079268a5234fae300da,
    0x01078ac1d1cfcc5dea20bbb64e572ce88522f4c8c6b4161a216b0e512c6e57cb,
    0x451404ec7707110437f0270c5c3adeccb4a67537d9e75b09f3060fef4c3b39f7,
    0x6939a5e4fd9e966b9c8b3d262afab3d5ac0ded40938d674c4093a8c3375a54b7,
    0x81b0578ae622e0edee4949fccf80002699b64dffc5863618c3af0f38d4469bf3,
    0xe000bb7fa11fb4c163eb69ad4f6a0575d48d9981517fa7c40828c3e6fadada30,
    0x3e13e433593e8ad720bf8225502a175d945d7c226910b073d1239e0b1a7db624,
    0x391cfd558de81f4a70288953819f9606f951c64977f60379b90d2042f1f79ef8,
    0xefa51eba21326c8b6e689b1e6338a4966a20ad982e53933916c90dc2131fc711,
    0xe80cb386ac2ef48373cad5b56a3ee90b12737892ec00ad80a7ab395da0285a0c,
    0x7fe2602b94d17c8fc0f727df8531f8559724b53050345b7a0e47b714aec193d7,
    0x94356e3b4b6f715726815a04a62eb0321f171b124f9fa00fbe32211d37f42a75,
    0x7d02bfc953a5597f814fcd93a33f021a7ac36b60f2544946cbfed9c9fcbeb801,
    0xd2ff073fa48206b57aa78326bde703380445cfaf3f05e10434540db13a77dc93,
    0x9df63780398b5031639daf5a8351f08b7dd4f86b722487f120b4234706cf3753,
    0x2e754eed6484d5133b8537d3892c3f6c597cd01b98786f015f42470744a01e3b,
    0x5308051b5cbf5b11a590a5bd3bfd8b59d6072c6aea33d2ecbf5109c9ef3d0ca4,
    0xfeb2aca234b96ebd35d6f530cdbf9c05add41f38b56b868c7002dca554540e99,
    0xacb41a544d70bc76d64b821a90c9e34d601bd3cc28bf4e8ed22e1b909c4025fd,
    0x2518373433c7546de6c0e12dbb580c9a4f1fb2d63ada2b53b9e437f4afcc2bef,
)
_GY = (
    0x2cb99cfc850675e8fb8db58ec8c2c216c1fb57740fb8f754c4716379d3a5af5d,
    0x5013e1e07db3427fa6e84f048a559dfb899c7cbe14da4163040f0752cc47c9ba,
    0xc6f8990c1523534a1122f0918fa9a8730966c53d415973862da56b7309f87a59,
    0x06da7aee3bcc6c4fa7cb53b19b53386c6b05efd1d73c18961cf468ffe87c90bc,
    0x87e1f0eec3e2ddfa6455ce06903a14ae0f878d875350c88d9cd28b3f218e740a,
    0x159a4ccc8d26dbecaaa8abb028ce1ee147be449a768f28112465ad5446b59886,
    0x721d664a908c70b9acfe90ec44dc9ae3076b245d49f0e8f08d9d8dc4787ba563,
    0xa9401bb33cd3db1ac1e31a2f05cfa50b1d0a0d9f833cddb0cf51e928ae30362f,
    0x31975005fb8ca3d7fb0c06375b5599680b50392d0e7b947c9fc58f2430dc8ccc,
    0x81af1ba404d1ad9dd4f92ca42847382d2ed738c960fff4095fee3d436c3392ee,
    0x54dbda6ea227182a376c2915576bcb6ef2b75b5509fcb1b447593ae58a1c8b72,
    0x3e93f88e302cabbedff8533c4c6bcd9692e499346d98f164c960a25dc91fb8e3,
    0x69ba87b8681a23047ec45ab35c03df0fd41699784393b5f638eda1f12f78a0a6,
    0xeff624c7d0fb0a1078183aec74fa21acf12b2e60d0c6fdd35022d094bed01d25,
    0xf8d4cc826e2f229d9e6cb67d19205542e5a19b768f4538b80334154a46d65448,
    0x0e419d291ac3e74487fde95ca1f400d93b12335e3e04d4a78fbbb8436252ebaa,
    0x2847687b1dc8e6aca16ceed7cf3d90ac8526823c0cdbe1c616872a5ea4d6bbac,
    0x1e2b4202503114f67612c6dc371a45c913ea935910e9ef5dec53f28ad61ff297,
    0x42d5dcb991f915a2503055a496329a649cde5707bf816623686ab327d780f253,
    0x3bb2c5bcabd9c54d33fb6e66b41ce386bf171620c18ed6b7b2fd1e0c2f8da33e,
    0xa9bb5340181431f41054084bbc79b4add5e03bcfa27c00985073fe6712142137,
    0x505c3b531af78ee9d2a0b7fdd20d4e04778ad7d788f8e0cf9571a01e252799f7,
    0x454091a68c2c753ca9c07d7aeba6623ff4ae3293d8a94ffcb59aecf0f3a67f01,
    0x6298e2753c56337548f4accf9c17099180bf3ecbbefdea0002d26f97ab655a27,
    0x72027379eac5a27adf14622d64692ff45f60c03913da5bfd26bfa782c4fd70d7,
    0xea9700060f4a3c34ad96d0da581dc3c108c3484ad2ecb9a0fbc5dcdc2e0f2d1d,
    0xcf43df1ae365a953ba03501864d0b637813069445ae027a5264cb81d9ca3c491,
    0x1ff30b962c3c6704a91343bd3a29c81f21ea9e3a0d366d414e685d4983d91024,
    0xe4a4760842723907a655bcb46094e9f4135f6b27a882071b7fa490a332d51985,
    0xfb362c236b303e850a166874f2c6738de6d8e6d603a4c0eed2efa742bc22ae1b,
    0x573599237b2e62d586ba70e614b273d14843171e44004ca88f7f8a8692c11c81,
    0x531f307fb48f21f22a0c7a7e9ce6f49f2cb9b9b3a185ae46ab12d90fbfd92fb9,
)


def _dbl(X, Y, Z):
    # dbl-2001-b specialised to a = -3 (EFD). Z3 = 2YZ: one multiply, which
    # costs the same as a square here. Infinity (Z = 0) stays infinity.
    d = Z * Z % _P
    g = Y * Y % _P
    b = X * g % _P
    a = 3 * (X - d) * (X + d) % _P
    X3 = (a * a - 8 * b) % _P
    return X3, (a * (4 * b - X3) - 8 * g * g) % _P, 2 * Y * Z % _P


def _madd(X1, Y1, Z1, x2, y2):
    # Jacobian + affine (madd-2004-hmv). The exceptional inputs (equal or
    # opposite points, infinity) take their own branches; random scalars never
    # reach them, crafted verification inputs can.
    if not Z1:
        return x2, y2, 1
    zz = Z1 * Z1 % _P
    h = (x2 * zz - X1) % _P
    r = (y2 * zz % _P * Z1 - Y1) % _P
    if not h:
        if r:
            return 1, 1, 0
        return _dbl(X1, Y1, Z1)
    hh = h * h % _P
    hhh = h * hh % _P
    v = X1 * hh % _P
    X3 = (r * r - hhh - 2 * v) % _P
    return X3, (r * (v - X3) - Y1 * hhh) % _P, Z1 * h % _P


def _add(X1, Y1, Z1, X2, Y2, Z2):
    # Jacobian + Jacobian (add-1998-cmo-2), same exceptional branches.
    if not Z1:
        return X2, Y2, Z2
    if not Z2:
        return X1, Y1, Z1
    z1z1 = Z1 * Z1 % _P
    z2z2 = Z2 * Z2 % _P
    u1 = X1 * z2z2 % _P
    s1 = Y1 * Z2 % _P * z2z2 % _P
    h = (X2 * z1z1 - u1) % _P
    r = (Y2 * Z1 % _P * z1z1 - s1) % _P
    if not h:
        if r:
            return 1, 1, 0
        return _dbl(X1, Y1, Z1)
    hh = h * h % _P
    hhh = h * hh % _P
    v = u1 * hh % _P
    X3 = (r * r - hhh - 2 * v) % _P
    return X3, (r * (v - X3) - s1 * hhh) % _P, Z1 * Z2 % _P * h % _P


def _inv(a, m):
    # a^-1 mod m by extended Euclid, about 4x faster here than Fermat's
    # pow(a, m - 2, m). Euclid's running time depends on its input, so the
    # input is blinded first: the loop sees a*b for a fresh random b, uniform
    # and independent of a (a nonce or a coordinate derived from one), and
    # a^-1 = b * (a*b)^-1. (MicroPython's pow(a, -1, m) silently returns 0.)
    b = int.from_bytes(rng.get(32), "big") % m or 1
    r0, r1 = m, a * b % m
    t0, t1 = 0, 1
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        t0, t1 = t1, t0 - q * t1
    if r0 != 1:
        raise ValueError("not invertible")
    return t0 * b % m


def _affine(X, Y, Z):
    zi = _inv(Z, _P)
    z2 = zi * zi % _P
    return X * z2 % _P, Y * z2 % _P * zi % _P


def _recode(k, nbits):
    # Make the scalar odd without changing the point: k and k + n give the same
    # multiple of any point of order n. With k odd, k' = (k + 2^nbits - 1) / 2
    # has bits b_i such that k = sum (2 b_i - 1) 2^i: every signed digit is +-1,
    # never 0, so no step of the schedule can be skipped for this scalar.
    # Both candidates are computed and one picked by index: the nonce's parity
    # is not a branch (a bit of every nonce is what lattice attacks feed on).
    k = (k + _N, k)[k & 1]
    return ((k + (1 << nbits) - 1) >> 1).to_bytes(33, "little")


def _comb_column(b, j):
    idx = 0
    i = j + (_TEETH - 2) * _SPACING
    while i >= 0:
        idx = (idx << 1) | ((b[i >> 3] >> (i & 7)) & 1)
        i -= _SPACING
    # Top digit -1: the column is the negation of the entry with all signs
    # flipped. Selected by index and arithmetic rather than a branch.
    i = j + (_TEETH - 1) * _SPACING
    top = (b[i >> 3] >> (i & 7)) & 1
    idx ^= 31 * (1 - top)
    y = _GY[idx]
    return _GX[idx], (_P - y, y)[top]


def _mul_g(k):
    # k*G, 0 <= k < n, Jacobian result.
    b = _recode(k, _TEETH * _SPACING)
    j = _SPACING - 1
    x, y = _comb_column(b, j)
    X, Y, Z = x, y, 1
    while j:
        j -= 1
        X, Y, Z = _dbl(X, Y, Z)
        x, y = _comb_column(b, j)
        X, Y, Z = _madd(X, Y, Z, x, y)
    return X, Y, Z


def _mul(k, x, y):
    # k*Q for an affine, validated Q, 0 <= k < n: signed fixed window of 4 bits,
    # digits odd in [-15, 15], table (2i+1)Q for i = 0..7.
    X2, Y2, Z2 = _dbl(x, y, 1)
    tx = [x]
    ty = [y]
    tz = [1]
    X, Y, Z = x, y, 1
    for _ in range(7):
        X, Y, Z = _add(X, Y, Z, X2, Y2, Z2)
        tx.append(X)
        ty.append(Y)
        tz.append(Z)
    # The table to affine with one shared inversion (Montgomery's trick), so
    # the 64 additions below are the cheaper mixed kind. No entry is infinity:
    # (2i+1)Q != 0 for i <= 7 when Q has prime order n.
    acc = [1]
    for i in range(1, 8):
        acc.append(acc[-1] * tz[i] % _P)
    inv = _inv(acc[7], _P)
    i = 7
    while i:
        zi = inv * acc[i - 1] % _P
        inv = inv * tz[i] % _P
        z2 = zi * zi % _P
        tx[i] = tx[i] * z2 % _P
        ty[i] = ty[i] * z2 % _P * zi % _P
        i -= 1
    # 65 digits of 4 bits: k < 2n < 2^257 needs 260 recoded bits. Digit i is
    # nibble i of k' as v, worth 2v - 15: positive (pos = 1) for v >= 8 with
    # table slot v & 7, else negative with slot (15 - v) / 2 = 7 - v. Slot and
    # sign are selected by arithmetic and indexing, not branches.
    b = _recode(k, 260)
    v = b[32] & 15
    pos = v >> 3
    j = (v ^ (7 - 7 * pos)) & 7
    y = ty[j]
    X, Y, Z = tx[j], (_P - y, y)[pos], 1
    i = 64
    while i:
        i -= 1
        X, Y, Z = _dbl(X, Y, Z)
        X, Y, Z = _dbl(X, Y, Z)
        X, Y, Z = _dbl(X, Y, Z)
        X, Y, Z = _dbl(X, Y, Z)
        v = (b[i >> 1] >> ((i & 1) << 2)) & 15
        pos = v >> 3
        j = (v ^ (7 - 7 * pos)) & 7
        y = ty[j]
        X, Y, Z = _madd(X, Y, Z, tx[j], (_P - y, y)[pos])
    return X, Y, Z


def _scalar(d):
    # A private key is exactly 32 big-endian bytes in [1, n-1]. The message
    # never includes the value.
    if len(d) != 32:
        raise ValueError("invalid private key")
    k = int.from_bytes(d, "big")
    if not 0 < k < _N:
        raise ValueError("invalid private key")
    return k


def _point(pub):
    # Uncompressed SEC1 point 04 || x || y. Checks stop invalid-curve attacks:
    # coordinates must be field elements and satisfy the curve equation. With
    # cofactor 1 that puts the point in the prime-order group; infinity has no
    # 65-byte encoding and (0, 0) is not on the curve (b != 0).
    if len(pub) != 65 or pub[0] != 4:
        raise ValueError("invalid public key")
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:65], "big")
    if x >= _P or y >= _P or (y * y - (x * x - 3) * x - _B) % _P:
        raise ValueError("invalid public key")
    return x, y


def _encode(x, y):
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _digest(h):
    # For P-256 with a 32-byte hash, bits2int is just the big-endian value.
    if len(h) != 32:
        raise ValueError("digest must be 32 bytes")
    return int.from_bytes(h, "big")


def _hmac(key, msg):
    # HMAC-SHA256 for keys of at most one block (RFC 6979 keys are 32 bytes).
    # Kept here so this module needs nothing but hashlib.
    k = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(c ^ 0x36 for c in k))
    inner.update(msg)
    outer = hashlib.sha256(bytes(c ^ 0x5C for c in k))
    outer.update(inner.digest())
    return outer.digest()


def _nonces(x, h, extra):
    # RFC 6979 section 3.2 HMAC-DRBG, with section 3.6's additional data k'
    # appended to the seed when `extra` is given (hedged signatures: a good RNG
    # adds protection against fault attacks, a bad one costs nothing). qlen =
    # hlen = 256, so one HMAC block is one candidate and bits2octets(h) is
    # (h mod n) in 32 bytes. x is int2octets(d).
    seed = x + (h % _N).to_bytes(32, "big")
    if extra:
        seed += extra
    v = b"\x01" * 32
    k = _hmac(bytes(32), v + b"\x00" + seed)
    v = _hmac(k, v)
    k = _hmac(k, v + b"\x01" + seed)
    v = _hmac(k, v)
    while True:
        v = _hmac(k, v)
        t = int.from_bytes(v, "big")
        if 0 < t < _N:
            yield t
        k = _hmac(k, v + b"\x00")
        v = _hmac(k, v)


def generate():
    """New private key: 32 bytes, uniform in [1, n-1] by rejection sampling
    (a draw is rejected with probability about 2^-32)."""
    while True:
        d = rng.get(32)
        if 0 < int.from_bytes(d, "big") < _N:
            return d


def public_key(d):
    """65-byte uncompressed public key for private key d."""
    return _encode(*_affine(*_mul_g(_scalar(d))))


def sign(d, digest, extra=None):
    """ECDSA signature (r, s) of a 32-byte digest; deterministic per RFC 6979,
    or hedged with `extra` random bytes (RFC 6979 section 3.6)."""
    x = _scalar(d)
    e = _digest(digest)
    for k in _nonces(bytes(d), e, extra):
        X, Y, Z = _mul_g(k)
        r = _affine(X, Y, Z)[0] % _N
        if not r:
            continue
        s = _inv(k, _N) * (e + r * x) % _N
        if s:
            return r, s


def verify(pub, digest, r, s):
    """True if (r, s) is a valid signature of the 32-byte digest under the
    65-byte public key. Raises ValueError for a malformed key or digest."""
    x, y = _point(pub)
    e = _digest(digest)
    if not (0 < r < _N and 0 < s < _N):
        return False
    w = _inv(s, _N)
    X1, Y1, Z1 = _mul_g(e * w % _N)
    X2, Y2, Z2 = _mul(r * w % _N, x, y)
    X, Y, Z = _add(X1, Y1, Z1, X2, Y2, Z2)
    if not Z:
        return False
    # x(R) mod n == r without inverting Z: X == c * Z^2 for c = r or, when
    # r + n is still a field element, c = r + n.
    zz = Z * Z % _P
    if (X - r * zz) % _P == 0:
        return True
    return r + _N < _P and (X - (r + _N) * zz) % _P == 0


def ecdh(d, peer):
    """Shared secret: the 32-byte x-coordinate of d * peer. The peer point is
    validated first; ValueError('invalid public key') if it is not on P-256."""
    k = _scalar(d)
    x, y = _point(peer)
    X, Y, Z = _mul(k, x, y)
    if not Z:
        # Impossible for a validated point and 0 < k < n; kept as a guard.
        raise ValueError("invalid public key")
    return _affine(X, Y, Z)[0].to_bytes(32, "big")
