"""Fleet CA: certificates only from CSRs that verify and name the expected
device; the inventory's uniqueness rules; `ictl ca issue` / `ictl ca list`."""
import datetime
import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mphelp import ROOT, run_mp
from ictl import ToolError, pki
from ictl import ca as fleet_ca


@pytest.fixture
def fleet(tmp_path):
    return pki.init_ca(tmp_path / "pki")


def csr_for(cn, key=None, extra_cn=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if extra_cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, extra_cn))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.DER)


def test_issue_from_device_csr(fleet):
    # A CSR made by the device code on the unix port.
    r = run_mp("from ironclad import p256, csr\nimport binascii\nd = p256.generate()\n"
               "print(binascii.hexlify(csr.build_csr(d, p256.public_key(d), 'ic-0a0b0c0d0e0f')).decode())")
    assert r.returncode == 0, r.stderr
    csr = fleet_ca.load_csr(bytes.fromhex(r.stdout.strip()))
    cert = fleet_ca.issue_from_csr(fleet, csr, "ic-0a0b0c0d0e0f", days=30)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ic-0a0b0c0d0e0f"
    assert cert.public_key().public_numbers() == csr.public_key().public_numbers()
    assert fleet.signed(cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc) / datetime.timedelta(days=1)
    assert 30 <= days < 30.01


def test_csr_whose_signature_fails_is_refused(fleet):
    _, der = csr_for("ic-1")
    bad = bytearray(der)
    bad[-3] ^= 0x01
    with pytest.raises(ToolError, match="signature does not verify"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(bytes(bad)), "ic-1")
    # a CSR whose public key was swapped for another (signature no longer matches)
    k2 = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    k1 = fleet_ca.load_csr(der).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    swapped = der.replace(k1, k2)
    assert swapped != der
    with pytest.raises(ToolError, match="signature does not verify"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(swapped), "ic-1")


def test_csr_for_another_device_or_key_type_is_refused(fleet):
    with pytest.raises(ToolError, match="not for device 'ic-1'"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(csr_for("ic-2")[1]), "ic-1")
    with pytest.raises(ToolError, match="not for device"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(csr_for("ic-1", extra_cn="ic-2")[1]), "ic-1")
    with pytest.raises(ToolError, match="not P-256"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(csr_for("ic-1", ec.generate_private_key(ec.SECP384R1()))[1]), "ic-1")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ToolError, match="not P-256"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(csr_for("ic-1", rsa_key)[1]), "ic-1")
    with pytest.raises(ToolError, match="not a valid"):
        fleet_ca.load_csr(b"\x30\x03\x02\x01\x00")
    with pytest.raises(ToolError, match="reserved"):
        fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(csr_for("fleet-console")[1]), "fleet-console")


def test_inventory_binds_device_id_to_board(fleet):
    inv = fleet_ca.Inventory.of(fleet)
    _, der = csr_for("ic-a")
    cert = fleet_ca.issue_from_csr(fleet, fleet_ca.load_csr(der), "ic-a")
    inv.record_issued(cert, "ic-a", "aa0000000001", "alice", "fw 1")
    inv.check_identity("ic-a", "aa0000000001")  # the same board again: fine
    with pytest.raises(ToolError, match="already belongs to another board"):
        inv.check_identity("ic-a", "bb0000000002")
    with pytest.raises(ToolError, match="in the inventory as device 'ic-a'"):
        inv.check_identity("ic-new", "aa0000000001")
    inv.check_identity("ic-new", "aa0000000001", reprovision=True)
    # an abandoned certificate reserves nothing
    inv.record("abandoned", cert, "ic-a", "aa0000000001", "alice")
    inv.check_identity("ic-a", "bb0000000002")
    (row,) = inv.devices().values()
    assert row["status"] == "abandoned" and row["fingerprint"] == pki.fingerprint(cert)
    with open(inv.path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ToolError, match="line 3 is not JSON"):
        inv.rows()


def ictl(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    return subprocess.run([sys.executable, "-m", "ictl", *args], capture_output=True, text=True, timeout=60, env=env)


def test_ictl_ca_issue_and_list(fleet, tmp_path):
    key, der = csr_for("ic-cli-1")
    (tmp_path / "d.csr").write_bytes(der)
    out = str(tmp_path / "d.crt")
    r = ictl("ca", "issue", "--dir", fleet.dir, "--csr", str(tmp_path / "d.csr"), "--device-id", "ic-cli-1",
             "--uid", "0A0B0C0D0E0F", "--out", out, "--operator", "bob")
    assert r.returncode == 0, r.stderr
    cert = pki.load_cert(out)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    r = ictl("ca", "list", "--dir", fleet.dir)
    assert "ic-cli-1" in r.stdout and "0a0b0c0d0e0f" in r.stdout and pki.fingerprint(cert) in r.stdout
    # the same id for another board, and a CSR for another device: one-line errors, nothing written
    for args, msg in ((["--device-id", "ic-cli-1", "--uid", "111111111111"], "another board"),
                      (["--device-id", "ic-cli-2", "--uid", "222222222222"], "not for device")):
        r = ictl("ca", "issue", "--dir", fleet.dir, "--csr", str(tmp_path / "d.csr"), "--out", str(tmp_path / "x.crt"), *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not os.path.exists(tmp_path / "x.crt")
    rows = [json.loads(line) for line in open(os.path.join(fleet.dir, fleet_ca.INVENTORY))]
    assert len(rows) == 1 and rows[0]["operator"] == "bob"
    # no private key of any device in the CA directory
    assert sorted(os.listdir(fleet.dir)) == ["ca.crt", "ca.key", "inventory.jsonl", "inventory.jsonl.lock"]


def test_ictl_ca_revoke_writes_the_crl(fleet, tmp_path):
    _, der = csr_for("ic-cli-3")
    (tmp_path / "d.csr").write_bytes(der)
    r = ictl("ca", "issue", "--dir", fleet.dir, "--csr", str(tmp_path / "d.csr"), "--device-id", "ic-cli-3",
             "--uid", "0a0b0c0d0e03", "--out", str(tmp_path / "d.crt"), "--operator", "bob")
    assert r.returncode == 0, r.stderr
    serial = fleet_ca.serial_hex(pki.load_cert(str(tmp_path / "d.crt")))
    r = ictl("ca", "revoke", "--dir", fleet.dir, "--device-id", "ic-cli-3", "--reason", "key_compromise", "--operator", "eve")
    assert r.returncode == 0, r.stderr
    assert "revoked ic-cli-3 serial %s (key_compromise)" % serial in r.stdout
    crl = x509.load_pem_x509_crl(open(os.path.join(fleet.dir, pki.CRL), "rb").read())
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    line = [x for x in ictl("ca", "list", "--dir", fleet.dir).stdout.splitlines() if x.startswith("ic-cli-3")]
    assert len(line) == 1 and " revoked " in line[0], line
    # nothing live left for that device or serial: one-line errors
    for args in (["--device-id", "ic-cli-3"], ["--serial", "abcdef"]):
        r = ictl("ca", "revoke", "--dir", fleet.dir, *args)
        assert r.returncode == 2 and "no live certificate" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert len(list(x509.load_pem_x509_crl(open(os.path.join(fleet.dir, pki.CRL), "rb").read()))) == 1
