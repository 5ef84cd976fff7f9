# P-256 (ironclad.p256), the strict DER codec (ironclad.der) and the PKCS#10
# CSR (ironclad.csr) on the unix port: RFC 6979 known answers, round trips,
# the precomputed comb table, point and key validation, DER strictness and
# timing. The Wycheproof vector runs are in test_p256_vectors.py.
HEAP_KIB = 128  # passed at 80 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts

import binascii
import hashlib
import os
import time

from ironclad import csr
from ironclad import der
from ironclad import p256

_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

unhex = binascii.unhexlify


def _hex(b):
    return binascii.hexlify(b).decode()


def test_rfc6979_p256_sha256_known_answers():
    # RFC 6979 appendix A.2.5: P-256 with SHA-256.
    x = unhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
    pub = p256.public_key(x)
    assert pub == unhex(
        "04"
        "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
        "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
    ), _hex(pub)
    vectors = (
        (
            b"sample",
            0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
            0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
            0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8,
        ),
        (
            b"test",
            0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0,
            0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
            0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083,
        ),
    )
    for msg, k, r, s in vectors:
        h = hashlib.sha256(msg).digest()
        assert next(p256._nonces(x, int.from_bytes(h, "big"), None)) == k, msg
        assert p256.sign(x, h) == (r, s), msg
        assert p256.verify(pub, h, r, s)
    print("REPORT: RFC 6979 A.2.5 P-256/SHA-256: 2 known answers (k, r, s) match")


def test_sign_verify_round_trips():
    n = 0
    for i in range(8):
        d = p256.generate()
        assert 0 < int.from_bytes(d, "big") < _N
        pub = p256.public_key(d)
        h = hashlib.sha256(("round trip %d" % i).encode()).digest()
        r, s = p256.sign(d, h)
        assert (r, s) == p256.sign(d, h)  # deterministic
        assert p256.verify(pub, h, r, s)
        assert der.ecdsa_sig_decode(der.ecdsa_sig_encode(r, s)) == (r, s)
        assert der.spki_p256_decode(der.spki_p256_encode(pub)) == pub
        # wrong digest, altered r or s, (r, -s) and out-of-range values fail
        assert not p256.verify(pub, hashlib.sha256(b"other").digest(), r, s)
        assert not p256.verify(pub, h, r, (s + 1) % _N or 1)
        assert not p256.verify(pub, h, (r + 1) % _N or 1, s)
        assert p256.verify(pub, h, r, _N - s)  # ECDSA is malleable; low-s is not enforced
        assert not p256.verify(pub, h, s, r)
        assert not p256.verify(pub, h, r, s + _N)
        assert not p256.verify(pub, h, 0, s)
        # hedged (RFC 6979 3.6): differs from the deterministic one, still valid,
        # and deterministic for the same extra input
        rh, sh = p256.sign(d, h, os.urandom(32))
        assert (rh, sh) != (r, s)
        assert p256.verify(pub, h, rh, sh)
        assert p256.sign(d, h, b"extra") == p256.sign(d, h, b"extra")
        n += 1
    print("REPORT: %d sign/verify round trips with fresh keys" % n)


def test_comb_table_matches_generator():
    # Recompute the fixed-base table from G with the module's own arithmetic.
    gx, gy = _GX, _GY
    base = []
    X, Y, Z = gx, gy, 1
    for m in range(6):
        base.append(p256._affine(X, Y, Z))
        for _ in range(43):
            X, Y, Z = p256._dbl(X, Y, Z)
    for i in range(32):
        x5, y5 = base[5]
        X, Y, Z = x5, y5, 1
        for m in range(5):
            bx, by = base[m]
            X, Y, Z = p256._madd(X, Y, Z, bx, by if (i >> m) & 1 else _P - by)
        assert Z, i
        assert p256._affine(X, Y, Z) == (p256._GX[i], p256._GY[i]), i


def test_fixed_and_variable_base_agree():
    # Same scalar through the comb (k*G) and the signed window (k*Q with Q=G),
    # including the edges of the range and k = 0, which must give infinity.
    gx, gy = _GX, _GY
    scalars = [1, 2, 3, 15, 16, 17, _N - 1, _N - 2, (_N - 1) // 2, 1 << 255]
    for _ in range(6):
        scalars.append(int.from_bytes(os.urandom(32), "big") % _N)
    for k in scalars:
        a = p256._mul_g(k)
        b = p256._mul(k, gx, gy)
        assert a[2] and b[2], k
        assert p256._affine(*a) == p256._affine(*b), k
    assert p256._affine(*p256._mul_g(_N - 1)) == (gx, _P - gy)
    assert not p256._mul_g(0)[2]
    assert not p256._mul(0, gx, gy)[2]


def test_blinded_inverse():
    for m in (_P, _N):
        for a in (1, 2, m - 1, int.from_bytes(os.urandom(32), "big") % m or 3):
            assert p256._inv(a, m) * a % m == 1, a
        for a in (0, m):
            try:
                p256._inv(a, m)
            except ValueError:
                pass
            else:
                raise AssertionError("inverted 0")


def test_ecdh_agrees_and_rejects_invalid_points():
    d1, d2 = p256.generate(), p256.generate()
    p1, p2 = p256.public_key(d1), p256.public_key(d2)
    assert p256.ecdh(d1, p2) == p256.ecdh(d2, p1)
    x, y = p2[1:33], p2[33:]
    y_int = int.from_bytes(y, "big")
    bad = [
        b"",
        b"\x04",
        b"\x00",  # SEC1 encoding of infinity
        p2[:64],  # short
        p2 + b"\x00",  # long
        b"\x02" + x,  # compressed: unsupported
        b"\x05" + x + y,  # bad prefix
        b"\x04" + bytes(64),  # (0, 0)
        b"\x04" + x + ((y_int + 1) % _P).to_bytes(32, "big"),  # off the curve
        b"\x04" + _P.to_bytes(32, "big") + y,  # x = p
        b"\x04" + x + _P.to_bytes(32, "big"),  # y = p
        b"\x04" + bytes(31) + b"\x01" + bytes(32),  # (1, 0): not on the curve
    ]
    for pub in bad:
        try:
            p256.ecdh(d1, pub)
        except ValueError as e:
            assert str(e) == "invalid public key", e
        else:
            raise AssertionError("accepted " + _hex(pub))
        try:
            p256.verify(pub, bytes(32), 1, 1)
        except ValueError:
            pass
        else:
            raise AssertionError("verify accepted " + _hex(pub))
    # Bad private keys: out of range or wrong size. Messages carry no secret.
    for d in (bytes(32), _N.to_bytes(32, "big"), b"\xff" * 32, d1[:31], d1 + b"\x00"):
        for fn in (lambda: p256.ecdh(d, p2), lambda: p256.public_key(d), lambda: p256.sign(d, bytes(32))):
            try:
                fn()
            except ValueError as e:
                assert str(e) == "invalid private key", e
            else:
                raise AssertionError("accepted private key")
    print("REPORT: ecdh: %d malformed/off-curve points and 5 bad private keys rejected" % len(bad))


def test_der_decoder_is_strict_and_bounded():
    good = der.ecdsa_sig_encode(1, 0x80)
    assert good == unhex("3007020101020200" "80")
    assert der.ecdsa_sig_decode(good) == (1, 0x80)
    bad = (
        "",
        "30",
        "3006020101020200",  # truncated: length past end
        "3007020101020200" "8000",  # trailing byte
        "308107020101020200" "80",  # long-form length for a short value
        "3080020101020200" "800000",  # BER indefinite length
        "30820007020101020200" "80",  # leading zero length byte
        "3007020101020180" "00",  # negative s, then a stray byte inside
        "3006020101020180",  # negative s
        "300702020001020101",  # non-minimal r
        "3005020101020100" "00",  # s runs past the end of the sequence
        "3006020101040180",  # wrong tag
        "3004020101" "0200",  # empty INTEGER
        "1f07020101020200" "80",  # high tag number form
        "3183" "ffffff",  # 3-byte length
        "3026020101022100" + "ff" * 32 + "00",  # trailing byte after 33-byte s
    )
    for h in bad:
        try:
            der.ecdsa_sig_decode(unhex(h))
        except ValueError:
            pass
        else:
            raise AssertionError("accepted " + h)
    # A minimal 34-byte INTEGER is refused by size before it is converted.
    try:
        der.ecdsa_sig_decode(unhex("3027020101" "022201" + "00" * 33))
    except ValueError:
        pass
    else:
        raise AssertionError("accepted 34-byte INTEGER")
    # SPKI: named curve only, uncompressed only
    pub = p256.public_key(p256.generate())
    spki = der.spki_p256_encode(pub)
    assert der.spki_p256_decode(spki) == pub
    for b in (spki + b"\x00", spki[:-1], spki.replace(der.oid(der.OID_PRIME256V1), der.oid("1.3.132.0.10"))):
        try:
            der.spki_p256_decode(b)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted SPKI " + _hex(b))


def _csr_parts(c):
    # CertificationRequest ::= SEQUENCE { info, algorithm, BIT STRING sig }
    start, stop = der.expect(c, 0, len(c), 0x30)
    assert stop == len(c)
    t, a, info_end = der.read(c, start, stop)
    assert t == 0x30
    info = c[start:info_end]
    a, b = der.expect(c, info_end, stop, 0x30)
    alg = c[a:b]
    a, b = der.expect(c, b, stop, 0x03)
    assert b == stop and c[a] == 0
    return info, alg, c[a + 1:b]


def test_csr_structure_and_signature():
    d = p256.generate()
    pub = p256.public_key(d)
    c = csr.build_csr(d, pub, "ironclad-0001")
    info, alg, sig = _csr_parts(c)
    assert alg == der.oid(der.OID_ECDSA_SHA256)
    r, s = der.ecdsa_sig_decode(sig)
    assert p256.verify(pub, hashlib.sha256(info).digest(), r, s)
    assert der.spki_p256_encode(pub) in info
    assert der.utf8_string("ironclad-0001") in info
    for name in ("", "x" * 65):
        try:
            csr.build_csr(d, pub, name)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted CN of %d bytes" % len(name))


def _ms(fn, n):
    best = None
    for _ in range(n):
        t = time.ticks_us()
        fn()
        dt = time.ticks_diff(time.ticks_us(), t)
        best = dt if best is None or dt < best else best
    return best / 1000


def test_timing():
    # Best of several runs on the unix port (the host CPU, not an ESP32).
    def keygen_csr():
        d = p256.generate()
        csr.build_csr(d, p256.public_key(d), "ironclad-0001")

    d = p256.generate()
    pub = p256.public_key(d)
    peer = p256.public_key(p256.generate())
    h = hashlib.sha256(b"timing").digest()
    r, s = p256.sign(d, h)
    t_csr = _ms(keygen_csr, 10)
    t_sign = _ms(lambda: p256.sign(d, h), 10)
    t_verify = _ms(lambda: p256.verify(pub, h, r, s), 10)
    t_ecdh = _ms(lambda: p256.ecdh(d, peer), 10)
    print("REPORT: unix port ms (best of 10): keygen+CSR %.1f, sign %.1f, verify %.1f, ecdh %.1f"
          % (t_csr, t_sign, t_verify, t_ecdh))
    assert t_csr <= 150, t_csr
