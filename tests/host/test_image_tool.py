"""`ictl image` (keygen, build, sign, verify, inspect, trust, install) with
one-line errors; the host and device verifiers agree on every reason code;
RSA-PSS with a 2049-bit modulus (emLen = k - 1, which no vector file has)."""
import contextlib
import hashlib
import io
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from ictl.sim import bootlab
from ictl.cli import main as cli
from ictl import image
from mphelp import ROOT, run_mp


def ictl(*args):
    """`ictl image ARGS` in this process (the CLI entry point, without an interpreter start)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["image", *args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def test_cli_process():
    r = subprocess.run([sys.executable, "-m", "ictl", "image", "verify", "/nonexistent.img", "--key", "/nonexistent.pem"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    assert "cannot read" in one_line_error(r)
    r = subprocess.run([sys.executable, "-m", "ictl", "image", "--help"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    assert r.returncode == 0 and all(a in r.stdout for a in ("keygen", "build", "sign", "verify", "inspect", "trust"))


def one_line_error(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in lines[0], r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgtool")
    bootlab.make_app(str(d / "app"), "1.2.3")
    assert ictl("keygen", str(d / "k.pem")).returncode == 0
    assert ictl("keygen", str(d / "other.pem")).returncode == 0
    return d


def test_keygen(work):
    key = image.load_private(str(work / "k.pem"))
    assert key.key_size == 3072 and key.public_key().public_numbers().e == 65537
    assert os.stat(work / "k.pem").st_mode & 0o777 == 0o600
    assert "exists" in one_line_error(ictl("keygen", str(work / "k.pem")))


def test_build_sign_verify_inspect(work):
    d = work
    r = ictl("build", str(d / "app"), "-o", str(d / "u.img"), "--version", "1.2.3", "--counter", "7", "--hwid", "esp32-s3")
    assert r.returncode == 0 and "UNSIGNED" in r.stdout, r.stderr
    assert "unsigned" in one_line_error(ictl("verify", str(d / "u.img"), "--key", str(d / "k.pem")))
    assert ictl("sign", str(d / "u.img"), "-o", str(d / "s.img"), "--key", str(d / "k.pem"), "--key-id", "fleet-a").returncode == 0
    r = ictl("verify", str(d / "s.img"), "--key", "fleet-a=%s" % (d / "k.pem"), "--hwid", "esp32-s3", "--floor", "7")
    assert r.returncode == 0 and "valid (version 1.2.3, counter 7, hwid esp32-s3, key id fleet-a)" in r.stdout
    assert "rollback" in one_line_error(ictl("verify", str(d / "s.img"), "--key", "fleet-a=%s" % (d / "k.pem"), "--floor", "8"))
    assert "wrong_hwid" in one_line_error(ictl("verify", str(d / "s.img"), "--key", "fleet-a=%s" % (d / "k.pem"), "--hwid", "esp32"))
    assert "unknown_key" in one_line_error(ictl("verify", str(d / "s.img"), "--key", str(d / "k.pem")))
    assert "bad_signature" in one_line_error(ictl("verify", str(d / "s.img"), "--key", "fleet-a=%s" % (d / "other.pem")))
    assert "key_retired" in one_line_error(ictl("verify", str(d / "s.img"), "--key", "fleet-a=%s" % (d / "k.pem"), "--retired", "fleet-a"))
    r = ictl("inspect", str(d / "s.img"), "--key", "fleet-a=%s" % (d / "k.pem"))
    assert r.returncode == 0
    for field in ("magic", "format", "header size", "app version     1.2.3", "security ctr    7", "hardware id     esp32-s3",
                  "payload length", "payload sha256", "payload kind    ROMFS", "key id          fleet-a", "signature len   384",
                  "flags", "verdict         valid"):
        assert field in r.stdout, field
    bad = bytearray((d / "s.img").read_bytes())
    bad[200] ^= 1
    (d / "bad.img").write_bytes(bytes(bad))
    r = ictl("inspect", str(d / "bad.img"), "--key", "fleet-a=%s" % (d / "k.pem"))
    assert r.returncode == 1 and "REJECTED: bad_hash" in r.stdout
    assert "not checked" in ictl("inspect", str(d / "s.img")).stdout


def test_one_line_errors(work, tmp_path):
    d = work
    assert "MAJOR.MINOR.PATCH" in one_line_error(ictl("build", str(d / "app"), "-o", str(tmp_path / "x"), "--version", "1.2"))
    assert "hardware id" in one_line_error(ictl("build", str(d / "app"), "-o", str(tmp_path / "x"), "--hwid", "bad id!"))
    (tmp_path / "empty").mkdir()
    assert "no main.py" in one_line_error(ictl("build", str(tmp_path / "empty"), "-o", str(tmp_path / "x")))
    assert "cannot read" in one_line_error(ictl("sign", str(tmp_path / "nope"), "-o", str(tmp_path / "x"), "--key", str(d / "k.pem")))
    (tmp_path / "ec.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert "PEM" in one_line_error(ictl("build", str(d / "app"), "-o", str(tmp_path / "x"), "--key", str(tmp_path / "ec.pem")))
    assert "not an image" in one_line_error(ictl("sign", str(d / "k.pem"), "-o", str(tmp_path / "x"), "--key", str(d / "k.pem"))) \
        or "magic" in one_line_error(ictl("sign", str(d / "k.pem"), "-o", str(tmp_path / "x"), "--key", str(d / "k.pem")))


def test_trust_and_install_into_a_simulated_board(work, tmp_path):
    d = work
    dev = tmp_path / "dev"
    subprocess.run([sys.executable, "-m", "ictl", "device", "create", str(dev)], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    r = ictl("trust", "--device", str(dev), "--key", "fleet-a=%s" % (d / "k.pem"), "--key", "old=%s" % (d / "other.pem"),
             "--retire", "old")
    assert r.returncode == 0, r.stderr
    assert (dev / "board" / "ironclad_trust.mpy").exists()  # compiled, as a firmware freezes it
    src = (dev / "board" / "src" / "ironclad_trust.py").read_text()
    assert "'fleet-a'" in src and "RETIRED = ('old', )" in src and "HWID = 'esp32-sim'" in src
    assert ictl("build", str(d / "app"), "-o", str(tmp_path / "i.img"), "--key", str(d / "k.pem"), "--key-id", "fleet-a").returncode == 0
    assert ictl("install", str(dev), str(tmp_path / "i.img")).returncode == 0
    assert bootlab.ran(bootlab.boot(str(dev))) == "1.2.3"


REASONS = """
from ironclad import image
import ironclad_trust


class Ram:
    def __init__(self, data):
        self.data = data

    def info(self):
        return (1, 0x40, 0, 0x48000, "ram", False)

    def readblocks(self, block, buf, off=0):
        for i in range(len(buf)):
            buf[i] = self.data[off + i] if off + i < len(self.data) else 0xFF


for path in PATHS:
    try:
        image.verify(Ram(open(path, "rb").read()), floor=3, event=None)
        print("R valid")
    except image.Rejected as e:
        print("R", e.reason)
"""


def test_host_and_device_verifiers_agree(work, tmp_path):
    """docs/image-format.md is implemented twice; both give the same verdict."""
    import struct

    key = image.load_private(str(work / "k.pem"))
    dev = bootlab.new_device(tmp_path / "dev", [("k1", key)], retired=("gone",))
    good = image.build(str(work / "app"), key, "k1", "1.0.0", 5)
    n = image.parse_header(good)["length"]

    def put(off, fmt, v):
        b = bytearray(good)
        struct.pack_into(fmt, b, off, v)
        return bytes(b)

    cases = [good, b"\xff" * 700, b"ICIX" + good[4:], put(4, "<H", 9), put(6, "<H", 64), put(22, "<H", 1),
             put(20, "<H", 0)[:128 + n], put(16, "<I", 0x100000), good.replace(b"esp32-sim", b"esp32-xyz"),
             image.build(str(work / "app"), key, "gone", "1.0.0", 5), image.build(str(work / "app"), key, "k1", "1.0.0", 2),
             image.build(str(work / "app"), image.load_private(str(work / "other.pem")), "k1", "1.0.0", 5),
             good[:128] + bytes([good[128] ^ 4]) + good[129:], good[:-1] + bytes([good[-1] ^ 1]),
             good.replace(b"k1\0", b"k2\0", 1), put(20, "<H", 256)[:128 + n + 256]]
    paths = []
    for i, c in enumerate(cases):
        p = tmp_path / ("c%d.img" % i)
        p.write_bytes(c)
        paths.append(str(p))
    r = bootlab.run(dev, "PATHS = %r\n" % paths + REASONS)
    device = [l.split()[1] for l in r.stdout.splitlines() if l.startswith("R ")]
    host = [image.verify(c + b"\xff" * 0x48000, {"k1": key.public_key()}, "esp32-sim", 3, ("gone",))[1] or "valid"
            for c in cases]
    assert device == host, (device, host)
    assert host[0] == "valid" and len(set(host)) >= 12


_SMALL = [p for p in range(3, 400, 2) if all(p % d for d in range(3, int(p ** 0.5) + 1, 2))]


def _prime(bits):
    import secrets

    while True:
        # Top two bits set: the product of a 1025- and a 1024-bit prime made
        # this way always has exactly 2049 bits.
        c = secrets.randbits(bits) | 3 << (bits - 2) | 1
        if any(c % p == 0 for p in _SMALL) or c % 65537 == 1:
            continue
        if all(pow(secrets.randbelow(c - 3) + 2, c - 1, c) == 1 for _ in range(24)):
            return c


def _key_2049():
    # OpenSSL rounds key sizes to whole bytes: build the key from our own primes.
    p, q = _prime(1025), _prime(1024)
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    pub = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), pub).private_key()


def test_rsapss_2049_bit_modulus():
    # modBits = 8k + 1: EM is one octet shorter than the signature, whose top
    # octet must then be zero (RFC 8017 9.1.2 with emLen = k - 1).
    key = _key_2049()
    n = key.public_key().public_numbers().n
    assert n.bit_length() == 2049
    pss = image.PSS
    msgs = [b"ironclad %d" % i for i in range(4)]
    sigs = [key.sign(m, pss, hashes.SHA256()) for m in msgs]
    assert all(len(s) == 257 for s in sigs)
    lines = ["from ironclad import rsapss", "n = %d" % n]
    for m, s in zip(msgs, sigs):
        h = hashlib.sha256(m).digest()
        lines.append("print(rsapss.verify(n, 65537, %r, %r))" % (h, s))
        bad = bytearray(s)
        bad[-5] ^= 0x20
        lines.append("print(rsapss.verify(n, 65537, %r, %r))" % (h, bytes(bad)))
        lines.append("print(rsapss.verify(n, 65537, %r, %r))" % (hashlib.sha256(m + b"x").digest(), s))
    r = run_mp("\n".join(lines))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "False"] * 4
