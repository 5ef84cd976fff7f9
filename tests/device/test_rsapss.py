# Device tests for ironclad.rsapss: every Wycheproof RSASSA-PSS case for the
# Secure Boot V2 scheme (SHA-256, MGF1-SHA256, 32-byte salt), 3072 and 2048
# bits, plus the length and range checks verify() makes before the padding.
#
# The vectors come from $IC_VECTORS/<stem>.jsonl, one case a line with its
# test group under "group", and are streamed line by line: the 3072-bit file
# is ~400 KB of JSON, far more than the device heap.
#
# "acceptable" cases: neither file has any today. If a future file adds some,
# we accept either verdict (Wycheproof's meaning) but the case must not raise,
# and the REPORT line says how many verified.
import binascii
import hashlib
import json
import os

from ironclad import rsapss

_STEM_3072 = "rsa_pss_3072_sha256_mgf1_32_test"
_STEM_2048 = "rsa_pss_2048_sha256_mgf1_32_test"


def _vectors(stem):
    d = os.getenv("IC_VECTORS")
    if not d:
        raise RuntimeError("IC_VECTORS is not set (directory of Wycheproof .jsonl files)")
    return d + "/" + stem + ".jsonl"


def _check_group(group):
    # The verifier is fixed to one parameter set; a vector file for another
    # set must fail loudly rather than produce meaningless verdicts.
    assert group["sha"] == "SHA-256", group["sha"]
    assert group["mgf"] == "MGF1", group["mgf"]
    assert group["mgfSha"] == "SHA-256", group["mgfSha"]
    assert group["sLen"] == 32, group["sLen"]


def _run_file(stem, key_bits):
    counts = {"valid": 0, "invalid": 0, "acceptable": 0}
    acceptable_ok = 0
    mod_hex = None
    n = e = None
    for line in open(_vectors(stem)):
        case = json.loads(line)
        group = case["group"]
        pk = group["publicKey"]
        if pk["modulus"] != mod_hex:
            # All cases of a group share one key; parse it once per group.
            _check_group(group)
            assert group["keySize"] == key_bits, group["keySize"]
            mod_hex = pk["modulus"]
            n = rsapss.int_from_bytes(binascii.unhexlify(mod_hex))
            e = rsapss.int_from_bytes(binascii.unhexlify(pk["publicExponent"]))
        mhash = hashlib.sha256(binascii.unhexlify(case["msg"])).digest()
        sig = binascii.unhexlify(case["sig"])
        result = case["result"]
        got = rsapss.verify(n, e, mhash, sig)
        counts[result] += 1
        if result == "valid":
            assert got is True, "tcId %d (%s) should verify" % (case["tcId"], case["comment"])
        elif result == "invalid":
            assert got is False, "tcId %d (%s) must not verify" % (case["tcId"], case["comment"])
        else:
            assert got is True or got is False
            acceptable_ok += got
        case = group = pk = line = None
    total = counts["valid"] + counts["invalid"] + counts["acceptable"]
    assert total > 0, "no cases in " + stem
    print(
        "REPORT: rsa_pss_%d: %d cases (valid %d, invalid %d, acceptable %d verified %d), all as expected"
        % (key_bits, total, counts["valid"], counts["invalid"], counts["acceptable"], acceptable_ok)
    )


def test_wycheproof_3072():
    _run_file(_STEM_3072, 3072)


def test_wycheproof_2048():
    _run_file(_STEM_2048, 2048)


def _valid_3072():
    # The "valid" 3072-bit cases as (n, e, mhash, sig): known-good inputs to
    # perturb, so a False below is caused by the perturbation alone.
    for line in open(_vectors(_STEM_3072)):
        case = json.loads(line)
        if case["result"] != "valid":
            continue
        pk = case["group"]["publicKey"]
        n = rsapss.int_from_bytes(binascii.unhexlify(pk["modulus"]))
        e = rsapss.int_from_bytes(binascii.unhexlify(pk["publicExponent"]))
        mhash = hashlib.sha256(binascii.unhexlify(case["msg"])).digest()
        yield n, e, mhash, binascii.unhexlify(case["sig"])


def _first_valid_3072():
    for v in _valid_3072():
        return v
    raise RuntimeError("no valid case in " + _STEM_3072)


def test_wrong_length_signature():
    n, e, mhash, sig = _first_valid_3072()
    assert len(sig) == 384
    assert rsapss.verify(n, e, mhash, sig) is True
    # A leading zero octet keeps the same integer but the length is not k:
    # RFC 8017 8.1.2 step 1 rejects it.
    assert rsapss.verify(n, e, mhash, b"\x00" + sig) is False
    assert rsapss.verify(n, e, mhash, sig[1:]) is False
    assert rsapss.verify(n, e, mhash, sig[:-1]) is False
    assert rsapss.verify(n, e, mhash, b"") is False
    assert rsapss.verify(n, e, mhash, sig + sig) is False
    # bytearray and memoryview are accepted like bytes.
    assert rsapss.verify(n, e, mhash, bytearray(sig)) is True
    assert rsapss.verify(n, e, mhash, memoryview(sig)) is True


def test_signature_not_below_modulus():
    # s + n is congruent to s, so pow() alone would accept it: the range
    # check in RSAVP1 is what rejects it. Use a valid case whose s + n still
    # fits in k = 384 octets (n is 0xc6.. at the top, so about a quarter do).
    limit = 1 << 3072
    for n, e, mhash, sig in _valid_3072():
        s = rsapss.int_from_bytes(sig)
        if s + n < limit:
            break
    else:
        raise RuntimeError("no valid case with s + n below 2**3072")
    assert rsapss.verify(n, e, mhash, sig) is True
    assert rsapss.verify(n, e, mhash, rsapss.int_to_bytes(s + n, 384)) is False
    assert rsapss.verify(n, e, mhash, rsapss.int_to_bytes(n, 384)) is False
    assert rsapss.verify(n, e, mhash, b"\xff" * 384) is False
    # n - 1 is in range but is not a PSS encoding: False, not an exception.
    assert rsapss.verify(n, e, mhash, rsapss.int_to_bytes(n - 1, 384)) is False
    assert rsapss.verify(n, e, mhash, bytes(384)) is False


def test_bad_arguments_raise_valueerror():
    n, e, mhash, sig = _first_valid_3072()
    bad = (
        (n, e, mhash[:31], sig),  # digest not 32 bytes
        (n, e, mhash + b"\x00", sig),
        (n, e, "x" * 32, sig),  # str is not a digest
        (n, e, mhash, "x" * 384),  # nor a signature
        (n, e, mhash, None),
        (str(n), e, mhash, sig),  # key as the wrong type
        (n, 65537.0, mhash, sig),
        (n + 1, e, mhash, sig),  # even modulus
        (n >> 1100 | 1, e, mhash, sig),  # under 2048 bits
        (n << 1100 | 1, e, mhash, sig),  # over 4096 bits
        (n, 1, mhash, sig),  # e = 1 makes every padding "verify"
        (n, 65536, mhash, sig),
        (n, n + 2, mhash, sig),
    )
    for i, args in enumerate(bad):
        try:
            rsapss.verify(*args)
        except ValueError:
            continue
        raise AssertionError("bad argument set %d did not raise ValueError" % i)
