"""The fleet CA's device side: certify a device's CSR, and keep the inventory
of every device certificate issued.

    csr = ca.load_csr(der_or_pem)
    cert = ca.issue_from_csr(fleet_ca, csr, "ic-240ac4000001")

A device certificate is issued only from a CSR whose signature verifies with
the P-256 key it carries (so the requester holds that private key: no device
private key ever exists on the host) and whose subject is exactly CN=<the
expected device id>. The certificate itself is pki.issue_client_cert's:
CN=device id, clientAuth, CLIENT_DAYS validity (capped by the CA's).

Inventory: <CA dir>/inventory.jsonl, append-only JSON lines, one per event:
    {"event": "issued", "time", "device_id", "uid", "serial", "fingerprint",
     "not_after", "operator", "firmware"}
    {"event": "provisioned" | "abandoned", "time", "device_id", "uid",
     "serial", "fingerprint", "operator"}
"abandoned": the certificate was issued but provisioning failed before the
board stored it (the board wiped its key).
    {"event": "revoked", "time", "device_id", "uid", "serial", "fingerprint",
     "operator", "reason"}
"revoked": the certificate is on the CA's revocation list, <CA dir>/crl.pem,
which `ictl ca revoke` rewrites (signed by the CA, next update in CRL_DAYS)
and the broker checks every client certificate against (mosquitto crlfile). A device id belongs to the board
(chip unique id) it was first issued to; the inventory refuses to give it to
another board. Writers hold an exclusive lock (inventory.lock) while they
check and append.
"""
import contextlib
import datetime
import fcntl
import json
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ictl import ToolError, pki

INVENTORY = "inventory.jsonl"
CRL_DAYS = 30  # a CRL's next update: re-run `ictl ca crl` (or revoke) before then
# Why a certificate was revoked (RFC 5280 CRLReason), as `ictl ca revoke --reason` names it.
REASONS = {
    "decommissioned": x509.ReasonFlags.cessation_of_operation,
    "superseded": x509.ReasonFlags.superseded,
    "key_compromise": x509.ReasonFlags.key_compromise,
}


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def load_csr(data):
    """A CSR from PEM or DER bytes; ToolError if it does not parse."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise ToolError("not a valid PKCS#10 certificate signing request") from None


def check_csr(csr, device_id):
    """Refuse a CSR that is not signed by its own P-256 key, or not for
    exactly CN=device_id."""
    pki.validate_device_id(device_id)
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError):  # unsupported algorithm or key
        valid = False
    if not valid:
        raise ToolError("the CSR's signature does not verify: it was altered, or not made by the key it carries")
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise ToolError("the CSR's key is not P-256 (secp256r1)")
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id]:
        raise ToolError("the CSR is for %s, not for device %r" % (
            ", ".join(repr(c) for c in cns) if cns else "no common name", device_id))
    return pub


def issue_from_csr(ca, csr, device_id, days=pki.CLIENT_DAYS):
    """A device certificate (CN=device_id, clientAuth) for the CSR's key."""
    return pki.issue_client_cert(ca, check_csr(csr, device_id), device_id, days=days)


def serial_hex(cert):
    return "%x" % cert.serial_number


class Inventory:
    """Append-only JSON-lines record of issued device certificates."""

    def __init__(self, path):
        self.path = str(path)

    @classmethod
    def of(cls, ca):
        return cls(os.path.join(ca.dir, INVENTORY))

    @contextlib.contextmanager
    def locked(self):
        """Exclusive lock for a check-then-append (other ictl processes wait)."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def rows(self):
        try:
            f = open(self.path)
        except FileNotFoundError:
            return []
        out = []
        with f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise ToolError("%s line %d is not JSON: repair the inventory before issuing more" % (self.path, n)) from None
                out.append(row)
        return out

    def append(self, row):
        row = dict(row, time=row.get("time") or _now().isoformat(timespec="seconds"))
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return row

    def devices(self):
        """{serial: merged row} for every issued certificate, latest event last."""
        certs = {}
        for r in self.rows():
            s = r.get("serial")
            if r.get("event") == "issued":
                certs[s] = dict(r, status="issued")
            elif s in certs:
                certs[s]["status"] = r.get("event")
                if r.get("event") == "revoked":
                    certs[s].update(revoked=r["time"], reason=r.get("reason", "decommissioned"))
        return certs

    def check_identity(self, device_id, uid, reprovision=False):
        """Refuse a device id that belongs to another board, and (unless
        reprovision) a board already known under another device id."""
        for c in self.devices().values():
            if c.get("status") == "abandoned":
                continue
            if c["device_id"] == device_id and c.get("uid") != uid:
                raise ToolError("device id %r already belongs to another board (unique id %s, serial %s): choose another id"
                                % (device_id, c.get("uid"), c["serial"]))
            if c.get("uid") == uid and c["device_id"] != device_id and not reprovision:
                raise ToolError("this board (unique id %s) is in the inventory as device %r: provision it under that id, "
                                "or pass --reprovision to give it a new one" % (uid, c["device_id"]))

    def record_issued(self, cert, device_id, uid, operator, firmware):
        return self.append({"event": "issued", "device_id": device_id, "uid": uid,
                            "serial": serial_hex(cert), "fingerprint": pki.fingerprint(cert),
                            "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
                            "operator": operator, "firmware": firmware})

    def record(self, event, cert, device_id, uid, operator):
        return self.append({"event": event, "device_id": device_id, "uid": uid, "serial": serial_hex(cert),
                            "fingerprint": pki.fingerprint(cert), "operator": operator})


def write_crl(ca, inv=None, days=CRL_DAYS):
    """<CA dir>/crl.pem: every certificate the inventory records as revoked,
    signed by the CA, valid for `days`. Returns its path."""
    inv = inv or Inventory.of(ca)
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
         .last_update(now).next_update(now + datetime.timedelta(days=days)))
    for r in inv.devices().values():
        if r["status"] != "revoked":
            continue
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(r["serial"], 16))
            .revocation_date(datetime.datetime.fromisoformat(r["revoked"]))
            .add_extension(x509.CRLReason(REASONS[r["reason"]]), critical=False).build())
    crl = b.sign(ca.key, hashes.SHA256())
    path = os.path.join(ca.dir, pki.CRL)
    pki.write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def revoke(ca, device_id=None, serial=None, reason="decommissioned", operator=None):
    """Revoke the device's live certificates (or the one with this serial)
    and rewrite the CRL. Returns the inventory rows revoked (ToolError if none)."""
    if reason not in REASONS:
        raise ToolError("unknown reason %r (have: %s)" % (reason, ", ".join(sorted(REASONS))))
    inv = Inventory.of(ca)
    with inv.locked():
        live = [r for r in inv.devices().values() if r["status"] in ("issued", "provisioned")
                and (serial is None or r["serial"] == serial.lower()) and (device_id is None or r["device_id"] == device_id)]
        if not live:
            raise ToolError("no live certificate for %s in %s" % (device_id or "serial " + str(serial), inv.path))
        for r in live:
            inv.append({"event": "revoked", "device_id": r["device_id"], "uid": r.get("uid"), "serial": r["serial"],
                        "fingerprint": r.get("fingerprint"), "operator": operator, "reason": reason})
        write_crl(ca, inv)
    return live
