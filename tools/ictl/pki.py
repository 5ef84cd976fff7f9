"""Fleet PKI: one P-256 CA that signs the broker's server certificate, the
fleet console's certificate and one client certificate per device.

Layout of a PKI directory (all PEM):
    ca.key       CA private key (0600) - never printed, never logged
    ca.crt       CA certificate
    server.key   broker key (0600), server.crt  (made by ensure_server_cert)
    console.key  fleet-console key (0600), console.crt (ensure_console_cert)

Issuing is split so a device CSR fits later: `CA.issue(public_key, subject,
...)` takes a public key object and an x509.Name, never a private key, so an
`issue_from_csr(ca, csr)` only has to check the CSR and call
`issue_client_cert(ca, csr.public_key(), device_id)`.

Real device keys are generated on the device; `make_client_key_and_cert`
generates one on the host and is for tests and development only.
"""
import datetime
import ipaddress
import os
import re
import stat

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ictl import ToolError

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL = "crl.pem"  # the CA's revocation list (ictl.ca.write_crl)
SERVER_KEY = "server.key"
SERVER_CERT = "server.crt"
CONSOLE_KEY = "console.key"
CONSOLE_CERT = "console.crt"

ORG = "Ironclad"
DEV_ORG = "Ironclad DEVELOPMENT ONLY"
CA_CN = "Ironclad fleet CA"
SERVER_CN = "ironclad-broker"
CONSOLE_ID = "fleet-console"  # the broker ACL gives this CN fleet-wide access
OPERATOR_PREFIX = "fleet-"    # CNs starting with this are operators, never devices

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 365
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1")

# Device ids become an MQTT topic level (ACL `%u`): no '/', '+', '#', '$',
# no spaces, bounded length.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def validate_device_id(device_id):
    """Raise ToolError unless device_id is safe as a topic level and a CN."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise ToolError("device id %r is not valid: use 1-64 of A-Z a-z 0-9 _ . - (starting with a letter or digit)" % (device_id,))
    if device_id.startswith(OPERATOR_PREFIX):
        raise ToolError("device id %r is reserved: ids starting with %r name operator identities (fleet console)" % (device_id, OPERATOR_PREFIX))
    return device_id


def new_key():
    """A fresh P-256 private key (host side: CA, broker, console, tests)."""
    return ec.generate_private_key(ec.SECP256R1())


# ---------------------------------------------------------------- encodings

def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(key):
    """PKCS#8 PEM, unencrypted. Only for writing to a 0600 file."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_der(key):
    """PKCS#8 DER, unencrypted (mbedTLS / MicroPython load_cert_chain accept it)."""
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_private(path, data):
    """Write a secret with 0600 from the first byte (no window with wider perms)."""
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_public(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_key_pem(path, key):
    _write_private(path, key_pem(key))


def write_key_der(path, key):
    _write_private(path, key_der(key))


def write_cert_pem(path, cert):
    write_public(path, cert_pem(cert))


def write_cert_der(path, cert):
    write_public(path, cert_der(cert))


def load_cert(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ToolError("certificate %s not found" % path) from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ToolError("%s is not a valid X.509 certificate" % path) from None


def load_key(path):
    _check_private_perms(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        # the message must not echo the key material
        raise ToolError("%s is not an unencrypted private key" % path) from None


def _check_private_perms(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ToolError("private key %s not found" % path) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ToolError("private key %s is readable by others: chmod 600 %s" % (path, path))


def fingerprint(cert):
    """SHA-256 of the DER certificate, as colon-separated hex."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def subject_cn(cert):
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else None


# ---------------------------------------------------------------------- CA

class CA:
    """A fleet CA loaded in memory. `key` stays in this process."""

    def __init__(self, directory, key, cert):
        self.dir = str(directory)
        self.key = key
        self.cert = cert

    @property
    def cert_path(self):
        return os.path.join(self.dir, CA_CERT)

    @property
    def key_path(self):
        return os.path.join(self.dir, CA_KEY)

    @property
    def development(self):
        return is_development(self.cert)

    def __repr__(self):  # never include the key
        return "<CA %s %s>" % (self.dir, self.cert.subject.rfc4514_string())

    def issue(self, public_key, subject, *, days, usages, san=None, not_before=None):
        """Sign an end-entity certificate for `public_key` (a public key object)
        with `subject` (x509.Name), extended key usages `usages` (OIDs) and
        optional SAN entries (x509.GeneralName list)."""
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise ToolError("only P-256 (secp256r1) keys can be certified by this CA")
        now = not_before or (_now() - datetime.timedelta(minutes=5))
        not_after = now + datetime.timedelta(days=days)
        if not_after > self.cert.not_valid_after_utc:
            not_after = self.cert.not_valid_after_utc
        b = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(self.cert.subject)
             .public_key(public_key)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now)
             .not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                                          encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def signed(self, cert):
        """True if `cert` was issued by this CA (signature and issuer name)."""
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


def is_development(cert):
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any("DEVELOPMENT ONLY" in a.value for a in orgs)


def ca_exists(directory):
    return os.path.exists(os.path.join(directory, CA_CERT)) and os.path.exists(os.path.join(directory, CA_KEY))


def init_ca(directory, dev=False, force=False, days=CA_DAYS):
    """Create a new fleet CA in `directory` (made 0700). Refuses to replace an
    existing CA unless force (which orphans every certificate it issued)."""
    directory = str(directory)
    if ca_exists(directory) and not force:
        raise ToolError("a CA already exists in %s: use it, or pass --force to replace it (all issued certificates become invalid)" % directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORG if dev else ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, CA_CN + (" (development only)" if dev else "")),
    ])
    now = _now() - datetime.timedelta(minutes=5)
    pub = key.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .sign(key, hashes.SHA256()))
    write_key_pem(os.path.join(directory, CA_KEY), key)
    write_cert_pem(os.path.join(directory, CA_CERT), cert)
    # certificates from an older CA in this directory are no longer valid
    for stale in (SERVER_CERT, CONSOLE_CERT):
        p = os.path.join(directory, stale)
        if os.path.exists(p) and force:
            os.unlink(p)
    return CA(directory, key, cert)


def load_ca(directory):
    directory = str(directory)
    if not ca_exists(directory):
        raise ToolError("no CA in %s: run `ictl pki init --dir %s --dev` first" % (directory, directory))
    cert = load_cert(os.path.join(directory, CA_CERT))
    key = load_key(os.path.join(directory, CA_KEY))
    if public_key_der(key.public_key()) != public_key_der(cert.public_key()):
        raise ToolError("%s and %s do not belong together: restore the pair or re-run `ictl pki init --force`" % (CA_KEY, CA_CERT))
    return CA(directory, key, cert)


def load_or_init_ca(directory, dev=True):
    """Load the CA in `directory`, creating a (development) one if there is none."""
    if ca_exists(directory):
        return load_ca(directory), False
    return init_ca(directory, dev=dev), True


# ------------------------------------------------------------ end entities

def _san(hosts):
    out = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def issue_server_cert(ca, hosts=DEFAULT_SERVER_HOSTS, public_key=None, days=SERVER_DAYS):
    """Broker certificate (serverAuth, SAN from `hosts`: names and IPs).
    Returns (key, cert); key is None when `public_key` was given."""
    key = None
    if public_key is None:
        key = new_key()
        public_key = key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value),
                         x509.NameAttribute(NameOID.COMMON_NAME, SERVER_CN)])
    cert = ca.issue(public_key, subject, days=days, usages=[ExtendedKeyUsageOID.SERVER_AUTH],
                    san=_san(hosts))
    return key, cert


def client_subject(ca, common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue_client_cert(ca, public_key, device_id, days=CLIENT_DAYS):
    """Device certificate: CN=device_id (the broker's MQTT username), clientAuth."""
    validate_device_id(device_id)
    return ca.issue(public_key, client_subject(ca, device_id), days=days,
                    usages=[ExtendedKeyUsageOID.CLIENT_AUTH])


def issue_console_cert(ca, public_key, days=CLIENT_DAYS, name=CONSOLE_ID):
    """Certificate for an operator identity (default CN=fleet-console,
    clientAuth). `name` must start with "fleet-" and be in the broker's
    `operators` to get fleet-wide access."""
    if not name.startswith(OPERATOR_PREFIX) or not DEVICE_ID_RE.match(name):
        raise ToolError("operator name %r is not valid: use fleet-<letters, digits, _ . ->" % (name,))
    return ca.issue(public_key, client_subject(ca, name), days=days,
                    usages=[ExtendedKeyUsageOID.CLIENT_AUTH])


def make_client_key_and_cert(ca, device_id, days=CLIENT_DAYS):
    """TEST/DEVELOPMENT ONLY: generate a device key on the host and certify it.
    Real devices generate their key on the device and send a CSR."""
    key = new_key()
    return key, issue_client_cert(ca, key.public_key(), device_id, days=days)


def _cert_ok(ca, path, min_days=7):
    if not os.path.exists(path):
        return False
    cert = load_cert(path)
    return ca.signed(cert) and cert.not_valid_after_utc - _now() > datetime.timedelta(days=min_days)


def ensure_server_cert(ca, hosts=DEFAULT_SERVER_HOSTS):
    """server.key/server.crt in the CA directory, (re)issued when missing,
    expiring, signed by another CA, or lacking one of `hosts`.
    Returns (key_path, cert_path)."""
    kp, cp = os.path.join(ca.dir, SERVER_KEY), os.path.join(ca.dir, SERVER_CERT)
    if _cert_ok(ca, cp) and os.path.exists(kp):
        cert = load_cert(cp)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = set(str(v) for v in san.get_values_for_type(x509.DNSName)) | \
                set(str(v) for v in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            have = set()
        if set(hosts) <= have:
            return kp, cp
    key, cert = issue_server_cert(ca, hosts)
    write_key_pem(kp, key)
    write_cert_pem(cp, cert)
    return kp, cp


def ensure_console_cert(ca):
    """console.key/console.crt (CN=fleet-console) in the CA directory, made on
    the host (the console is a host tool). Returns (key_path, cert_path)."""
    kp, cp = os.path.join(ca.dir, CONSOLE_KEY), os.path.join(ca.dir, CONSOLE_CERT)
    if _cert_ok(ca, cp) and os.path.exists(kp):
        return kp, cp
    key = new_key()
    write_key_pem(kp, key)
    write_cert_pem(cp, issue_console_cert(ca, key.public_key()))
    return kp, cp


def describe(cert):
    """One-line summary of a certificate (no secrets)."""
    eku = []
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            eku = ["CA"]
    except x509.ExtensionNotFound:
        pass
    try:
        eku += [o._name for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        pass
    return "%s  valid %s..%s  %s  sha256 %s" % (
        cert.subject.rfc4514_string(), cert.not_valid_before_utc.date(), cert.not_valid_after_utc.date(),
        ",".join(eku) or "-", fingerprint(cert))
