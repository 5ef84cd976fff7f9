# Wycheproof vectors for P-256 ECDSA (DER and IEEE P1363 signatures) and
# ECDH, streamed one line at a time under the default 96 KiB heap. Kept apart
# from test_p256.py so that the code loaded before the first 9 KB line is
# small: on the 64-bit unix port a larger module leaves no contiguous block
# big enough for it.
#
# Wycheproof "acceptable" cases (all in the ECDH file) are ones a library may
# accept or reject. Our choice is to reject every one of them, and the test
# holds us to it:
#   InvalidAsn (BER length forms in the SPKI): the decoder is strict DER only.
#   UnnamedCurve (explicit curve parameters): only the prime256v1 named curve.
#   CompressedPoint: spki_p256_decode supports uncompressed points only; no
#     peer of this device sends compressed ones.
HEAP_KIB = 128  # passed at 88 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts

import binascii
import gc
import hashlib
import json
import os

from ironclad import der
from ironclad import p256

unhex = binascii.unhexlify


# Longest vector line is ~9.4 KB (Wycheproof's 4 KB DER overflow probes,
# hex-encoded). One buffer of this size is allocated per file and reused.
_LINE_MAX = 10 * 1024


def _cases(stem, blob):
    # One JSON object per line, read into a preallocated buffer rather than a
    # fresh readline() string per line. The one field that can be huge (`blob`:
    # the signature or public key, up to 8 KB of hex) is decoded straight from
    # the buffer to bytes and cut out of the line before json.loads, so no 8 KB
    # str is ever built: on the 64-bit unix port's 96 KiB heap, after the code
    # is loaded, blocks that size are hard to find. t[blob] is bytes.
    root = os.getenv("IC_VECTORS")
    if not root:
        raise RuntimeError("IC_VECTORS is not set")
    key = b'"' + blob.encode() + b'":"'
    # Collect first so the buffer lands low in the heap, not past the garbage
    # of compiling this module, where it would split the free space in two.
    gc.collect()
    buf = bytearray(_LINE_MAX)
    mv = memoryview(buf)
    off = 0
    with open(root + "/" + stem + ".jsonl", "rb") as f:
        while True:
            f.seek(off)
            n = f.readinto(mv)
            if not n:
                return
            end = buf.find(b"\n", 0, n)
            if end < 0:
                if n == _LINE_MAX:
                    raise ValueError("vector line longer than %d bytes" % _LINE_MAX)
                end = n  # last line without a newline
            off += end + 1
            gc.collect()
            a = buf.find(key, 0, end)
            if a < 0:
                raise ValueError("no %s field" % blob)
            a += len(key)
            b = buf.find(b'"', a, end)
            value = binascii.unhexlify(mv[a:b])
            tail = bytes(mv[b:end])
            mv[a:a + len(tail)] = tail
            t = json.loads(mv[:a + len(tail)])
            t[blob] = value
            yield t


def _verify_file(stem, decode_sig):
    counts = {"valid": 0, "invalid": 0}
    wrong = []
    for t in _cases(stem, "sig"):
        g = t["group"]
        # The group's DER key and its raw point must agree: exercises the SPKI
        # decoder on 100+ distinct keys, edge-case coordinates included.
        pub = der.spki_p256_decode(unhex(g["publicKeyDer"]))
        if pub != unhex(g["publicKey"]["uncompressed"]):
            wrong.append(("spki", t["tcId"]))
            continue
        digest = hashlib.sha256(unhex(t["msg"])).digest()
        try:
            r, s = decode_sig(t["sig"])
        except ValueError:
            ok = False
        else:
            ok = p256.verify(pub, digest, r, s)
        result = t["result"]
        if result not in counts:
            raise ValueError("unexpected result %s in %s" % (result, stem))
        counts[result] += 1
        if ok != (result == "valid"):
            wrong.append(t["tcId"])
    total = counts["valid"] + counts["invalid"]
    print("REPORT: %s: %d cases (%d valid, %d invalid), %d wrong" % (stem, total, counts["valid"], counts["invalid"], len(wrong)))
    assert not wrong, wrong
    assert total > 200, total


def _p1363(sig):
    if len(sig) != 64:
        raise ValueError("P1363 signature must be 64 bytes")
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")


def test_wycheproof_ecdsa_der():
    _verify_file("ecdsa_secp256r1_sha256_test", der.ecdsa_sig_decode)


def test_wycheproof_ecdsa_p1363():
    _verify_file("ecdsa_secp256r1_sha256_p1363_test", _p1363)


def test_wycheproof_ecdh():
    counts = {"valid": 0, "invalid": 0, "acceptable": 0}
    wrong = []
    for t in _cases("ecdh_secp256r1_test", "public"):
        # Private keys are big-endian ints, sometimes with a 00 sign byte.
        d = int(t["private"], 16).to_bytes(32, "big")
        try:
            shared = p256.ecdh(d, der.spki_p256_decode(t["public"]))
        except ValueError:
            shared = None
        result = t["result"]
        counts[result] += 1
        if result == "valid":
            good = shared == unhex(t["shared"])
        else:
            # invalid must be refused; acceptable ones we refuse by choice
            good = shared is None
        if not good:
            wrong.append(t["tcId"])
    print("REPORT: ecdh_secp256r1_test: %d valid agreed, %d invalid and %d acceptable rejected, %d wrong"
          % (counts["valid"], counts["invalid"], counts["acceptable"], len(wrong)))
    assert not wrong, wrong
    assert counts["valid"] > 300, counts
