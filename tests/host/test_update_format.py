"""The update formats against independent implementations (docs/updates.md):
the metadata is a COSE_Sign1 that pycose verifies (PS256) and whose payload
cbor2 reads; chunks open with cryptography's AES-CCM under the key the
device unwraps (here re-derived with cryptography from the device's side of
ECDH-ES and RFC 3394 unwrap); the chain digest is SHA-256 over the chunks."""
import hashlib
import os
import struct

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from pycose.keys import RSAKey
from pycose.messages import Sign1Message

from ictl import image as app_image
from ictl import update


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("k") / "sign.pem")
    key = app_image.keygen(p)
    return key, app_image.key_id_for(key.public_key())


def test_metadata_is_cose_sign1_ps256_and_chunks_open_with_the_wrapped_key(signer):
    key, kid = signer
    dev = ec.generate_private_key(ec.SECP256R1())
    pub = dev.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    new = b"\xe9" + os.urandom(10000)
    base = new[:5000] + os.urandom(100) + new[5100:]
    upd = update.Update.create(new, base=base, target="fw", version=7, counter=3, hwid="esp32-sim")
    msg = upd.metadata("d1", pub, key, kid)
    assert msg[:1] == b"M"
    cose = Sign1Message.decode(msg[1:])
    nums = key.public_key().public_numbers()
    cose.key = RSAKey(n=nums.n.to_bytes(384, "big"), e=nums.e.to_bytes(3, "big"))
    assert cose.verify_signature()
    assert cbor2.loads(cose.phdr_encoded) == {1: -37, 4: kid.encode()}  # alg PS256, kid
    m = cbor2.loads(cose.payload)
    assert m["dev"] == "d1" and m["target"] == "fw" and m["ver"] == 7 and m["ctr"] == 3
    assert m["result"] == {"len": len(new), "sha": hashlib.sha256(new).digest()}
    assert m["base"]["sha"] == hashlib.sha256(base).digest() and m["n"] == upd.n
    # A signature byte flipped: pycose refuses it too.
    bad = bytearray(msg[1:])
    bad[-5] ^= 1
    cose2 = Sign1Message.decode(bytes(bad))
    cose2.key = cose.key
    assert not cose2.verify_signature()
    # The device's side of ECDH-ES: Z = ECDH(device key, epk), KEK by HKDF, RFC 3394 unwrap.
    epk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), m["kw"]["epk"])
    z = dev.exchange(ec.ECDH(), epk)
    k = aes_key_unwrap(update.kek(z, m["id"], "d1", m["kw"]["epk"]), m["kw"]["wk"])
    patch = b""
    aead = AESCCM(k, tag_length=16)
    for i in range(upd.n):
        c = upd.chunk(i)
        assert c[:1] == b"C" and c[1:17] == m["id"] and struct.unpack(">I", c[17:21])[0] == i
        patch += aead.decrypt(b"\x00" * 9 + struct.pack(">I", i), c[21:], b"ICUC" + m["id"] + struct.pack(">I", i))
    assert len(patch) == m["patch"]["len"]
    d = bytes(32)
    for i in range(0, len(patch), 4096):
        d = hashlib.sha256(d + patch[i:i + 4096]).digest()
    assert d == m["patch"]["chain"]
    # ... and the patch is a detools sequential patch that detools applies.
    import io

    import detools

    out = io.BytesIO()
    detools.apply_patch(io.BytesIO(base), io.BytesIO(patch), out)
    assert out.getvalue() == new
    # Another device's wrap does not open for this one.
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    m2 = cbor2.loads(Sign1Message.decode(upd.metadata("d2", other, key, kid)[1:]).payload)
    z2 = dev.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), m2["kw"]["epk"]))
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap

    with pytest.raises(InvalidUnwrap):
        aes_key_unwrap(update.kek(z2, m2["id"], "d2", m2["kw"]["epk"]), m2["kw"]["wk"])
