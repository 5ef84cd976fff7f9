"""USB provisioning of a board that runs the Ironclad firmware, through the
real `mpremote` (any port it accepts: a USB serial device, a virtual board's
pty, its shortcuts).

    p = Provisioner(port, ca, broker={"host", "port", "hostname", "prefix"},
                    fleet_pub=<65-byte point>, log_path=..., operator=...)
    result = p.run()

Steps (each one `mpremote exec` of ironclad.provision on the board):
  1 read the board: firmware marker (ironclad.provision.PROTOCOL), chip
    unique id, provisioned or not
  2 refuse what must not be provisioned (all-zero unique id, a device id
    that belongs to another board, an already provisioned board without
    --reprovision); with --reprovision and confirmation, wipe the board
  3 the board makes its P-256 key pair and a CSR (the key never leaves it)
  4 the CA checks the CSR and issues the certificate (inventory: issued)
  5 the board checks the certificate is for its key and id and signed by the
    CA and the fleet data key is a P-256 point (one exec), stores the Wi-Fi
    credentials when given (the passphrase sealed to the board's key from
    its CSR: it crosses the USB link and the mpremote command line only
    encrypted, and is in no output, log or record), then stores
    certificate, CA, broker settings and the fleet data key, sets its clock
    and the clock's floor to this host's time (a board has no battery-backed
    clock), and marks itself provisioned, its last write (another: P-256 and
    the NVS writes together do not fit a small heap)
  6 read the board again: provisioned, with this certificate (inventory:
    provisioned)
A failure after step 2 wipes the board (inventory: abandoned, if a
certificate was issued), so it is left unprovisioned and clean and the
command can be run again; if the board cannot be reached to wipe it, the
next run wipes it first. Every attempt appends one JSON line to the
provisioning log: who, when, port, device id, unique id, certificate
fingerprint, firmware, outcome, error. No secret crosses the USB link or
reaches a log: the board sends only its CSR.
"""
import datetime
import getpass
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ictl import ToolError, read_file, broker as fleet_broker, ca as fleet_ca, fleetkeys, pki

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
PROTOCOL = 1
LOG = "provision.jsonl"
_ANSWER = "ICPROV "
STEPS = 6
DEVICE_IMPORT = "from ironclad import provision\n"  # the frozen module each step runs (firmware manifest checks it)


class NotAgent(ToolError):
    """The port answers, but not with the Ironclad firmware."""


def load_fleet_pub(path):
    """The fleet data public key as a 65-byte uncompressed P-256 point, from
    a PEM or DER SubjectPublicKeyInfo, the raw 65 bytes, or their hex (what
    `ictl console fleet-key` prints)."""
    data = read_file(path, "the fleet data public key")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        elif len(data) == 65:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
        elif data.strip()[:2] == b"04" and len(data.strip()) == 130:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(data.strip().decode()))
        else:
            key = serialization.load_der_public_key(data)
    except ValueError:
        raise ToolError("%s is not a P-256 public key (PEM, DER, or the 65-byte point)" % path) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ToolError("%s is not a P-256 public key" % path)
    return fleetkeys.public_point(key)


def ntp_setting(text):
    """A time server as the board keeps it, "host[:port]" (a DNS name or IPv4
    address; the board asks port 123 when none is given), checked by the
    board's rule (ironclad.identity.ntp_server)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "123"
    ok = 0 < len(host) <= 253 and all(c.isascii() and (c.isalnum() or c in ".-") for c in host)
    if not ok or not port.isdigit() or not 0 < int(port) < 65536:
        raise ToolError("time server %r is not valid: give HOST or HOST:PORT (a DNS name or IPv4 address)" % (text,))
    return text


def load_broker_ca(path):
    """The CA certificate(s) in a PEM or DER file, as concatenated DER."""
    data = read_file(path)
    try:
        certs = x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ToolError("%s holds no certificate (PEM or DER)" % path) from None
    return b"".join(pki.cert_der(c) for c in certs)


def wifi_credentials(ssid, passphrase):
    """(ssid, passphrase) checked by the board's rule (ironclad.net.check);
    errors never quote the passphrase."""
    if not ssid or len(ssid.encode()) > 32:
        raise ToolError("Wi-Fi SSID must be 1-32 bytes")
    k = passphrase
    ok = k == "" or (8 <= len(k) <= 63 and all(32 <= ord(c) < 127 for c in k)) or (
        len(k) == 64 and all(c in "0123456789abcdefABCDEF" for c in k))
    if not ok:
        raise ToolError("the Wi-Fi passphrase must be 8-63 printable ASCII characters or 64 hex digits")
    return ssid, passphrase


WIFI_INFO = b"ironclad-wifi-v1"


def seal_wifi(board_pub, device_id, ssid, passphrase):
    """The passphrase sealed to the board's key (ironclad.provision.open_wifi
    opens it): ephemeral P-256 point || nonce || AES-128-CCM(passphrase, AAD
    SSID) with a 16-byte tag, under HKDF-SHA256(ECDH, info WIFI_INFO || id)."""
    eph = ec.generate_private_key(ec.SECP256R1())
    z = eph.exchange(ec.ECDH(), board_pub)
    k = HKDF(hashes.SHA256(), 16, None, WIFI_INFO + device_id.encode()).derive(z)
    nonce = secrets.token_bytes(13)
    point = eph.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point + nonce + AESCCM(k, tag_length=16).encrypt(nonce, passphrase.encode(), ssid.encode())


def broker_settings(host, port, hostname=None, prefix=fleet_broker.DEFAULT_PREFIX, ntp=None):
    """The broker entry the board keeps: where to connect, which name the
    broker's certificate must carry, and the time server (optional) it sets
    its clock from before TLS."""
    if not host or any(c.isspace() for c in host):
        raise ToolError("broker host %r is not valid" % (host,))
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ToolError("broker port %r is not valid: 1-65535" % (port,))
    if hostname is None:
        # The development broker certificate names localhost, not the IP.
        hostname = "localhost" if host in ("127.0.0.1", "::1") else host
    if not hostname or any(c.isspace() for c in hostname):
        raise ToolError("broker TLS hostname %r is not valid" % (hostname,))
    out = {"host": host, "port": port, "hostname": hostname, "prefix": fleet_broker.validate_prefix(prefix)}
    if ntp is not None:
        out["ntp"] = ntp_setting(ntp)
    return out


def default_device_id(uid, inventory):
    """The id a board gets when none is given: the one the inventory already
    has for this chip, else a random pseudonym. Never derived from the unique
    id, which is the chip's MAC address (payloads must not carry it)."""
    for c in inventory.devices().values():
        if c.get("uid") == uid and c.get("status") != "abandoned":
            return c["device_id"]
    return "ic-" + secrets.token_hex(6)


def check_uid(uid):
    """Refuse a missing or default chip id: every board must be told apart."""
    try:
        raw = bytes.fromhex(uid)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) < 6:
        raise ToolError("the board reports no usable unique id (%r): it cannot be told apart from other boards" % (uid,))
    if raw.count(0) == len(raw) or raw.count(0xFF) == len(raw):
        raise ToolError("the board reports a default unique id (%s): refusing to provision a board that cannot be told apart" % uid)
    return uid


class Board:
    """The board on `port`, reached with one `mpremote exec` per step."""

    def __init__(self, port, mpremote=MPREMOTE, timeout=120):
        self.port = port
        self.mpremote = mpremote
        self.timeout = timeout

    def _exec(self, code):
        return subprocess.run([self.mpremote, "connect", self.port, "exec", code],
                              capture_output=True, text=True, timeout=self.timeout)

    def call(self, step, *args):
        code = DEVICE_IMPORT + "provision.%s(%s)" % (step, ", ".join(repr(a) for a in args))
        try:
            r = self._exec(code)
        except subprocess.TimeoutExpired:
            raise ToolError("the board on %s did not answer within %d s" % (self.port, self.timeout)) from None
        except OSError as e:
            raise ToolError("cannot run mpremote (%s): %s" % (self.mpremote, e.strerror)) from None
        text = (r.stdout + r.stderr).strip()
        if r.returncode:
            if "failed to access" in text or "no device found" in text:
                raise ToolError("cannot open %s: no board there, or another program is using it" % self.port)
            if "ImportError" in text:
                raise NotAgent("the board on %s does not run the Ironclad firmware (no ironclad.provision): "
                               "flash the agent firmware first" % self.port)
            if "raw repl" in text.lower():
                raise ToolError("%s does not answer as a MicroPython REPL" % self.port)
            last = text.splitlines()[-1] if text else "no output"
            raise ToolError("the board failed in step %s: %s" % (step, last))
        for line in r.stdout.splitlines():
            if line.startswith(_ANSWER):
                try:
                    answer = json.loads(line[len(_ANSWER):])
                except ValueError:
                    break
                if "error" in answer:
                    raise ToolError("the board refused: %s" % answer["error"])
                return answer
        raise ToolError("no answer from the board in step %s (is it the Ironclad firmware?)" % step)


def firmware_text(info):
    app = info.get("app")
    return "ironclad %s; MicroPython %s; app %s" % (
        info.get("ironclad"), info.get("micropython"),
        "%s (%s)" % (app["version"], app["slot"]) if app else "none (recovery mode)")


class Provisioner:
    def __init__(self, port, ca, broker, fleet_pub, device_id=None, operator=None, log_path=None,
                 reprovision=False, confirm=None, out=print, days=pki.CLIENT_DAYS, mpremote=MPREMOTE,
                 broker_ca=None, wifi=None):
        self.board = Board(port, mpremote)
        # (ssid, passphrase) the board joins, or None (a board with another
        # link); the passphrase is kept here only until step 5 sends it.
        self.wifi = wifi
        # The certificates the board trusts for the broker, when the fleet CA
        # does not certify it (AWS IoT Core: Amazon's root CA): DER bytes.
        self.broker_ca = broker_ca
        self.port = port
        self.ca = ca
        self.broker = broker
        self.fleet_pub = fleet_pub
        self.device_id = device_id
        self.operator = operator or getpass.getuser()
        self.log_path = log_path or os.path.join(ca.dir, LOG)
        self.inventory = fleet_ca.Inventory.of(ca)
        self.reprovision = reprovision
        self.confirm = confirm
        self.out = out
        self.days = days
        self.record = {}

    def _step(self, n, text):
        self.out("[%d/%d] %s" % (n, STEPS, text))

    def run(self):
        self.record = {"operator": self.operator, "port": self.port, "device_id": self.device_id,
                       "uid": None, "fingerprint": None, "firmware": None,
                       "wifi_ssid": self.wifi[0] if self.wifi else None}
        issued = None
        touched = False  # the board's keystore may hold a half-made identity
        try:
            self._step(1, "reading the board on %s" % self.port)
            info = self.board.call("info")
            if info.get("protocol") != PROTOCOL:
                raise NotAgent("the board speaks provisioning protocol %r, this ictl %d: update one of them"
                               % (info.get("protocol"), PROTOCOL))
            uid = check_uid(info.get("uid"))
            dev = pki.validate_device_id(default_device_id(uid, self.inventory) if self.device_id is None else self.device_id)
            self.record.update(uid=uid, device_id=dev, firmware=firmware_text(info))
            self.out("      firmware: %s" % self.record["firmware"])
            self.out("      unique id %s, device id %s" % (uid, dev))

            self._step(2, "checking the board may be given this identity")
            with self.inventory.locked():
                self.inventory.check_identity(dev, uid, self.reprovision)
            if info.get("provisioned"):
                was = info.get("device_id") or "unknown"
                if not self.reprovision:
                    raise ToolError("the board is already provisioned (device %s%s): pass --reprovision to wipe it and "
                                    "provision it again" % (was, ", keystore damaged" if info.get("damaged") else ""))
                if self.confirm and not self.confirm("Wipe every credential on the board (device %s) and provision it as %s?" % (was, dev)):
                    raise ToolError("not confirmed: the board was left as it was")
                self.out("      wiping the board's credentials (was device %s)" % was)
                touched = True
                self.board.call("wipe")

            self._step(3, "the board makes its key pair and CSR (the private key stays on the board)")
            touched = True
            csr_der = bytes.fromhex(self.board.call("start", dev)["csr"])

            self._step(4, "issuing the certificate")
            csr = fleet_ca.load_csr(self.csr_received(csr_der))
            board_pub = csr.public_key()
            with self.inventory.locked():
                self.inventory.check_identity(dev, uid, self.reprovision)
                cert = fleet_ca.issue_from_csr(self.ca, csr, dev, days=self.days)
                self.inventory.record_issued(cert, dev, uid, self.operator, self.record["firmware"])
            issued = cert
            fp = pki.fingerprint(cert)
            self.record["fingerprint"] = fp
            self.out("      serial %s, valid until %s, sha256 %s" % (fleet_ca.serial_hex(cert), cert.not_valid_after_utc.date(), fp))

            self._step(5, "the board checks the certificate and stores certificate, CA, broker %s:%d and the fleet data key"
                       % (self.broker["host"], self.broker["port"]))
            cert_hex = pki.cert_der(self.cert_to_send(cert)).hex()
            ca_hex = pki.cert_der(self.ca.cert).hex()
            self.board.call("check", cert_hex, ca_hex, self.fleet_pub.hex())
            if self.wifi:
                self.out("      Wi-Fi network %s (passphrase sealed in the board's keystore)" % self.wifi[0])
                self.board.call("wifi", self.wifi[0], seal_wifi(board_pub, dev, *self.wifi).hex())
            done = self.board.call("finish", cert_hex, ca_hex, json.dumps(self.broker), self.fleet_pub.hex(),
                                   int(time.time()), self.broker_ca.hex() if self.broker_ca else None)

            self._step(6, "checking the board")
            after = self.board.call("info")
            want = hashlib.sha256(pki.cert_der(cert)).hexdigest()
            if not after.get("provisioned") or after.get("fingerprint") != want \
                    or done.get("fingerprint") != want or after.get("device_id") != dev \
                    or after.get("wifi") != (self.wifi[0] if self.wifi else None):
                raise ToolError("the board did not keep the credentials (it reports %s)" % json.dumps(
                    {k: after.get(k) for k in ("provisioned", "device_id", "fingerprint", "wifi")}))
            self.inventory.append({"event": "provisioned", "device_id": dev, "uid": uid,
                                   "serial": fleet_ca.serial_hex(cert), "fingerprint": fp, "operator": self.operator})
            # The board's earlier certificates name a key it no longer has: revoked (superseded).
            for r in self.inventory.devices().values():
                if r.get("uid") == uid and r["serial"] != fleet_ca.serial_hex(cert) and r["status"] in ("issued", "provisioned"):
                    fleet_ca.revoke(self.ca, serial=r["serial"], reason="superseded", operator=self.operator)
                    self.out("      revoked its earlier certificate, serial %s (superseded): give the broker the new CRL"
                             % r["serial"])
            self._log("ok")
            self.out("provisioned %s (unique id %s), certificate sha256 %s" % (dev, uid, fp))
            return dict(self.record, outcome="ok")
        except (ToolError, KeyboardInterrupt) as e:
            error = str(e) if isinstance(e, ToolError) else "interrupted"
            if touched:
                error += self._clean_up()
            if issued is not None:
                self.inventory.record("abandoned", issued, self.record["device_id"], self.record["uid"], self.operator)
            self._log("failed", error)
            if isinstance(e, ToolError):
                raise type(e)(error) from None
            raise

    def _clean_up(self):
        """Wipe a half-provisioned board; returns text for the error message."""
        try:
            self.board.call("wipe")
            return "; the board was wiped and is unprovisioned: fix the cause and run the command again"
        except ToolError as e:
            return ("; the board could not be wiped (%s): it is not provisioned, and the next run wipes it first" % e)

    def _log(self, outcome, error=None):
        row = dict(self.record, time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   outcome=outcome)
        if error:
            row["error"] = error
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    # Seams on the USB link's two payloads: the tests use them to play a
    # link that alters the CSR or delivers another device's certificate.
    def csr_received(self, csr_der):
        return csr_der

    def cert_to_send(self, cert):
        return cert
