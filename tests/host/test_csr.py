"""The device's P-256, CSR and key DER (ironclad.p256/der/csr on the unix port)
checked against real peers: the `cryptography` library for CSRs, ECDSA and
ECDH, and the port's own mbedTLS for the SEC1 private key."""
import datetime
import json
import os
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from mphelp import MICROPYTHON, ROOT, mp_env, run_mp

SECP256R1 = ec.SECP256R1()


def device(code, *args):
    """Run MicroPython code on the unix port; its last stdout line is JSON."""
    r = run_mp(code, args=[str(a) for a in args])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def host_pub(pub65):
    return ec.EllipticCurvePublicKey.from_encoded_point(SECP256R1, bytes.fromhex(pub65))


def pub_bytes(key):
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


CSR = """
import sys, json, binascii
from ironclad import p256, csr
d = p256.generate()
pub = p256.public_key(d)
c = csr.build_csr(d, pub, sys.argv[1])
print(json.dumps({"pub": binascii.hexlify(pub).decode(), "csr": binascii.hexlify(c).decode()}))
"""


@pytest.mark.parametrize("cn", ["ironclad-0001", "dev/42 (test)", "Gerät-ü-01", "x" * 64])
def test_device_csr_verifies_with_cryptography(cn):
    out = device(CSR, cn)
    req = x509.load_der_x509_csr(bytes.fromhex(out["csr"]))
    assert req.is_signature_valid
    assert req.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert len(req.subject.rdns) == 1
    assert pub_bytes(req.public_key()) == bytes.fromhex(out["pub"])
    assert isinstance(req.public_key().curve, ec.SECP256R1)
    # DER is canonical: re-encoding what cryptography parsed gives the same bytes.
    assert req.public_bytes(serialization.Encoding.DER) == bytes.fromhex(out["csr"])


SIGN = """
import sys, json, binascii
from ironclad import p256, der
d = p256.generate()
out = {"d": binascii.hexlify(d).decode(), "pub": binascii.hexlify(p256.public_key(d)).decode(), "sigs": []}
for i in range(1, len(sys.argv)):
    h = binascii.unhexlify(sys.argv[i])
    r, s = p256.sign(d, h)
    rh, sh = p256.sign(d, h, ("hedge %d" % i).encode())
    out["sigs"].append([binascii.hexlify(der.ecdsa_sig_encode(r, s)).decode(),
                        binascii.hexlify(der.ecdsa_sig_encode(rh, sh)).decode()])
print(json.dumps(out))
"""


def test_device_signatures_verify_with_cryptography():
    msgs = [b"", b"abc", os.urandom(100), b"ironclad" * 50]
    digests = [hashes.Hash(hashes.SHA256()) for _ in msgs]
    for h, m in zip(digests, msgs):
        h.update(m)
    digests = [h.finalize() for h in digests]
    out = device(SIGN, *[h.hex() for h in digests])
    pub = host_pub(out["pub"])
    # In this test only, the key comes to the host, to compare RFC 6979 nonces
    # with cryptography's own deterministic ECDSA (OpenSSL's implementation).
    priv = ec.derive_private_key(int(out["d"], 16), SECP256R1)
    assert pub_bytes(priv.public_key()) == bytes.fromhex(out["pub"])
    for m, h, (det, hedged) in zip(msgs, digests, out["sigs"]):
        pub.verify(bytes.fromhex(det), m, ec.ECDSA(hashes.SHA256()))
        pub.verify(bytes.fromhex(hedged), m, ec.ECDSA(hashes.SHA256()))
        assert det != hedged
        want = priv.sign(h, ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True))
        assert bytes.fromhex(det) == want


VERIFY = """
import sys, json, binascii
from ironclad import p256, der
pub = der.spki_p256_decode(binascii.unhexlify(sys.argv[1]))
res = []
for i in range(2, len(sys.argv), 2):
    r, s = der.ecdsa_sig_decode(binascii.unhexlify(sys.argv[i + 1]))
    res.append(p256.verify(pub, binascii.unhexlify(sys.argv[i]), r, s))
print(json.dumps(res))
"""


def test_cryptography_signatures_verify_on_device():
    key = ec.generate_private_key(SECP256R1)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    args, want = [spki.hex()], []
    for i in range(6):
        h = hashes.Hash(hashes.SHA256())
        h.update(b"message %d" % i)
        digest = h.finalize()
        sig = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        if i % 2:
            # a signature over a different digest must not verify
            r, s = utils.decode_dss_signature(sig)
            digest = bytes(32 - 1) + b"\x01"
            sig = utils.encode_dss_signature(r, s)
            want.append(False)
        else:
            want.append(True)
        args += [digest.hex(), sig.hex()]
    assert device(VERIFY, *args) == want


ECDH = """
import sys, json, binascii
from ironclad import p256
d = p256.generate()
pub = p256.public_key(d)
shared = p256.ecdh(d, binascii.unhexlify(sys.argv[1]))
print(json.dumps({"pub": binascii.hexlify(pub).decode(), "shared": binascii.hexlify(shared).decode()}))
"""


def test_ecdh_agrees_with_cryptography():
    for _ in range(3):
        key = ec.generate_private_key(SECP256R1)
        out = device(ECDH, pub_bytes(key.public_key()).hex())
        assert key.exchange(ec.ECDH(), host_pub(out["pub"])) == bytes.fromhex(out["shared"])


# The device keeps its private key in this process: it prints its public key,
# the host answers with a TBSCertificate for that key (issuer = subject), the
# device signs it, assembles the self-signed certificate with ironclad.der and
# hands certificate and SEC1 key DER to the port's mbedTLS (a truncated key must
# fail, so acceptance is not vacuous). Then it uses them for real: a TLS client
# handshake against a host server that demands a client certificate and trusts
# only this one, so mbedTLS must sign the handshake with the device key.
MBEDTLS = """
import sys, json, binascii, hashlib, socket, ssl
from ironclad import p256, der
d = p256.generate()
pub = p256.public_key(d)
print(binascii.hexlify(pub).decode())
tbs = binascii.unhexlify(sys.stdin.readline().strip())
r, s = p256.sign(d, hashlib.sha256(tbs).digest())
cert = der.sequence(tbs, der.sequence(der.oid(der.OID_ECDSA_SHA256)), der.bit_string(der.ecdsa_sig_encode(r, s)))
key = der.ec_private_key_der(d, pub)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_cert_chain(cert, key)
try:
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key[:-8])
    bad = "accepted"
except (ValueError, OSError) as e:
    bad = "rejected"
print(json.dumps({"cert": binascii.hexlify(cert).decode(), "key": binascii.hexlify(key).decode(), "truncated": bad}))
port, server_cert = sys.stdin.readline().split()
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=binascii.unhexlify(server_cert))
sock = socket.socket()
sock.settimeout(10)
sock.connect(socket.getaddrinfo("127.0.0.1", int(port))[0][-1])
tls = ctx.wrap_socket(sock, server_hostname="localhost")
tls.write(b"ping")
print(json.dumps({"reply": tls.read(4).decode()}))
tls.close()
"""


def self_signed(key, cn):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))


def tls_server(tmp_path, client_cert_der):
    """One-shot TLS server thread requiring exactly this client certificate;
    returns (port, server cert DER, result dict filled in by the thread)."""
    key = ec.generate_private_key(SECP256R1)
    cert = self_signed(key, "localhost")
    (tmp_path / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=client_cert_der)
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(30)
    result = {}

    def serve():
        try:
            conn, _ = lsock.accept()
            conn.settimeout(30)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result["peer"] = tls.getpeercert(binary_form=True)
                result["got"] = tls.recv(4)
                tls.sendall(b"pong")
        except (OSError, ssl.SSLError) as e:
            result["error"] = repr(e)
        finally:
            lsock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock.getsockname()[1], cert.public_bytes(serialization.Encoding.DER), result, t


def test_mbedtls_uses_device_key_and_self_signed_cert(tmp_path):
    script = tmp_path / "mbedtls.py"
    script.write_text(MBEDTLS)
    env = mp_env()
    # ssl is a frozen module on the unix port: keep ".frozen" on the path.
    env["MICROPYPATH"] += ":.frozen"
    p = subprocess.Popen([MICROPYTHON, "-X", "heapsize=96K", str(script)], env=env, cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        pub = host_pub(line) if len(line) == 130 else pytest.fail("device: %s %s" % (line, p.stderr.read()))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ironclad-0001")])
        now = datetime.datetime.now(datetime.timezone.utc)
        # Signed by a throwaway key only to get cryptography to emit the TBS
        # bytes with ecdsa-with-SHA256 in them; the device's signature replaces it.
        draft = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub)
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                 .sign(ec.generate_private_key(SECP256R1), hashes.SHA256()))
        p.stdin.write(draft.tbs_certificate_bytes.hex() + "\n")
        p.stdin.flush()
        line = p.stdout.readline().strip()
        out = json.loads(line) if line.startswith("{") else pytest.fail("device: %s %s" % (line, p.stderr.read()))
        cert_der = bytes.fromhex(out["cert"])
        port, server_der, result, thread = tls_server(tmp_path, cert_der)
        stdout, stderr = p.communicate("%d %s\n" % (port, server_der.hex()), timeout=60)
        thread.join(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, stderr
    assert out["truncated"] == "rejected"
    cert = x509.load_der_x509_certificate(cert_der)
    cert.verify_directly_issued_by(cert)  # self-signed by the device key
    key = serialization.load_der_private_key(bytes.fromhex(out["key"]), None)
    assert pub_bytes(key.public_key()) == pub_bytes(pub)
    # the handshake: server saw the device certificate, both directions worked
    assert "error" not in result, result
    assert result["peer"] == cert_der
    assert result["got"] == b"ping"
    assert json.loads(stdout.strip().splitlines()[-1]) == {"reply": "pong"}
