"""Fleet broker: mutual TLS, per-device ACL, persistence, errors, and a TLS
client from the MicroPython unix port. Every broker runs on 127.0.0.1 on a
free port and is stopped in a fixture; keys are made at test time."""
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import paho.mqtt.client as mqtt  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from ictl import ToolError, broker, pki  # noqa: E402

pytestmark = pytest.mark.timeout(120)

from ictl.sim import MICROPYTHON  # noqa: E402  (IRONCLAD_MICROPYTHON picks another build)
WAIT = 10.0  # seconds for anything that should happen
PREFIX = broker.DEFAULT_PREFIX


def t(dev, kind, *rest):
    return broker.device_topic(PREFIX, dev, kind, *rest)


# ------------------------------------------------------------------ fixtures

class Fleet:
    def __init__(self, b, workdir):
        self.broker = b
        self.dir = str(workdir)
        self.ca = b.load_ca()

    def identity(self, device_id, ca=None):
        """(cert_path, key_path) PEM for a device, key made on the host (test only)."""
        ca = ca or self.ca
        key, cert = pki.make_client_key_and_cert(ca, device_id)
        base = os.path.join(self.dir, "%s-%s" % (device_id, pki.fingerprint(ca.cert)[:5].replace(":", "")))
        pki.write_key_pem(base + ".key", key)
        pki.write_cert_pem(base + ".crt", cert)
        return base + ".crt", base + ".key"

    def console(self):
        return self.broker.console_cert_path, self.broker.console_key_path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    state = tmp_path_factory.mktemp("broker")
    b = broker.Broker(state)
    try:
        b.start()
        yield Fleet(b, tmp_path_factory.mktemp("ids"))
    finally:
        b.stop()
    assert not b.running


class Client:
    """A paho-mqtt 2.x client with blocking helpers and a message queue."""

    def __init__(self, port, ca_path, cert=None, client_id="", clean=True, protocol=mqtt.MQTTv311):
        kw = {"clean_session": clean} if protocol != mqtt.MQTTv5 else {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kw)
        self.c.tls_set(ca_certs=ca_path, certfile=cert[0] if cert else None, keyfile=cert[1] if cert else None)
        self.c.reconnect_delay_set(30, 30)  # no retry storms while a test looks
        self.port = port
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.reason = None
        self.subacks = {}
        self.pubacks = {}
        self.c.on_connect = self._on_connect
        self.c.on_connect_fail = lambda c, u: self.ended.set()
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.setdefault(mid, rcs)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.setdefault(mid, rc)

    def _on_connect(self, c, u, flags, rc, props):
        self.reason = rc
        self.session_present = flags.session_present
        (self.ended if rc.is_failure else self.connected).set()

    def _on_disconnect(self, c, u, flags, rc, props):
        self.reason = self.reason or rc
        self.connected.clear()
        self.ended.set()

    def try_connect(self, timeout=WAIT):
        """True when CONNACK accepted arrives; False when refused (TLS or MQTT)."""
        try:
            self.c.connect("localhost", self.port, keepalive=30)
        except (ssl.SSLError, OSError):
            return False
        self.c.loop_start()
        done = threading.Event()

        def watch():
            while not (self.connected.is_set() or self.ended.is_set()):
                if done.wait(0.02):
                    return
        w = threading.Thread(target=watch, daemon=True)
        w.start()
        w.join(timeout)
        done.set()
        return self.connected.is_set()

    def connect(self):
        assert self.try_connect(), "connect refused: %r" % (self.reason,)
        return self

    def subscribe(self, topic, qos=1):
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        _wait_for(lambda: mid in self.subacks)
        return self.subacks[mid]

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), "no PUBACK for %s" % topic
        return self.pubacks.get(info.mid)

    def expect(self, topic, payload, timeout=WAIT):
        """Wait for one message and return everything received before it."""
        before = []
        while True:
            m = self.messages.get(timeout=timeout)
            if m == (topic, payload):
                return before
            before.append(m)

    def drain(self):
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


def _wait_for(cond, timeout=WAIT):
    ev = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        ev.wait(0.02)
    raise AssertionError("timed out")


@pytest.fixture
def clients():
    made = []

    def make(fleet, cert, **kw):
        c = Client(fleet.broker.port, fleet.broker.ca_path, cert, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


# ------------------------------------------------------------------ PKI

def test_ca_files_and_certificates(tmp_path):
    ca = pki.init_ca(tmp_path / "pki", dev=True)
    assert os.stat(ca.key_path).st_mode & 0o777 == 0o600
    assert ca.development
    assert ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Ironclad DEVELOPMENT ONLY"
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.cert.public_key().curve.name == "secp256r1"
    again = pki.load_ca(tmp_path / "pki")
    assert pki.cert_der(again.cert) == pki.cert_der(ca.cert)
    with pytest.raises(ToolError):
        pki.init_ca(tmp_path / "pki")  # no silent replacement

    _, server = pki.issue_server_cert(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    key = pki.new_key()
    cert = pki.issue_client_cert(ca, key.public_key(), "dev-42", days=30)
    assert pki.subject_cn(cert) == "dev-42" and ca.signed(cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other = pki.init_ca(tmp_path / "other")
    assert not other.development and not other.signed(cert)


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "dev+1", "", "x" * 65, "$SYS", "fleet-console", "fleet-x", " d"])
def test_device_ids_that_would_escape_the_acl_are_refused(tmp_path, bad):
    ca = pki.init_ca(tmp_path, dev=True)
    with pytest.raises(ToolError):
        pki.issue_client_cert(ca, pki.new_key().public_key(), bad)


def test_pki_cli_never_prints_a_key(tmp_path):
    d = str(tmp_path / "pki")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "ictl", "pki", *a], capture_output=True, text=True, env=env, timeout=60)
    r = run("init", "--dir", d, "--dev")
    assert r.returncode == 0 and "DEVELOPMENT ONLY" in r.stdout
    r2 = run("show", "--dir", d)
    assert r2.returncode == 0 and "CN=Ironclad fleet CA" in r2.stdout
    r3 = run("init", "--dir", d)
    assert r3.returncode == 2 and len(r3.stderr.strip().splitlines()) == 1
    for out in (r.stdout + r.stderr, r2.stdout + r2.stderr):
        assert "PRIVATE" not in out and "BEGIN" not in out


# ------------------------------------------------------------------ broker over TLS

def test_device_round_trip_on_own_topics(fleet, clients):
    dev = clients(fleet, fleet.identity("rt-1"), client_id="rt-1").connect()
    con = clients(fleet, fleet.console()).connect()
    assert [int(r.value) for r in dev.subscribe(t("rt-1", "cmd", "#"))] == [1]
    con.subscribe(t("+", "telemetry"))
    con.publish(t("rt-1", "cmd", "reboot"), b"now")
    assert dev.expect(t("rt-1", "cmd", "reboot"), b"now") == []
    dev.publish(t("rt-1", "telemetry"), b'{"t": 1}')
    assert con.expect(t("rt-1", "telemetry"), b'{"t": 1}') == []
    assert fleet.broker.rss_kib() > 0


def test_acl_isolates_devices(fleet, clients):
    a = clients(fleet, fleet.identity("iso-a")).connect()
    b = clients(fleet, fleet.identity("iso-b")).connect()
    con = clients(fleet, fleet.console()).connect()
    # A tries to read everything, and B's topics explicitly; B and the console listen normally
    for topic in ("#", PREFIX + "/#", t("iso-b", "cmd", "#"), t("iso-b", "telemetry"), t("iso-a", "telemetry")):
        a.subscribe(topic)
    a.subscribe(t("iso-a", "cmd", "#"))
    b.subscribe(t("iso-b", "cmd", "#"))
    con.subscribe(PREFIX + "/#")

    # traffic for B: the console commands B, B reports telemetry
    con.publish(t("iso-b", "cmd", "x"), b"for-b")
    assert b.expect(t("iso-b", "cmd", "x"), b"for-b") == []
    b.publish(t("iso-b", "telemetry"), b"b-telemetry")
    con.expect(t("iso-b", "telemetry"), b"b-telemetry")

    # A writes into B's command and telemetry topics, and to its own cmd topic
    a.publish(t("iso-b", "cmd", "x"), b"forged-cmd")
    a.publish(t("iso-b", "telemetry"), b"forged-telemetry")
    a.publish(t("iso-a", "cmd", "x"), b"self-cmd")
    a.publish(PREFIX + "/iso-b", b"forged-parent")

    # markers: once they arrive, anything routed before them would have too
    con.publish(t("iso-b", "cmd", "marker"), b"m")
    got_b = b.expect(t("iso-b", "cmd", "marker"), b"m")
    con.publish(t("iso-a", "cmd", "marker"), b"m")
    got_a = a.expect(t("iso-a", "cmd", "marker"), b"m")
    b.publish(t("iso-b", "events"), b"m")
    got_con = con.expect(t("iso-b", "events"), b"m")

    assert got_b == [], "B received a message A published into B's topics"
    assert got_a == [], "A read another device's traffic: %r" % got_a
    assert all(p not in (b"forged-cmd", b"forged-telemetry", b"self-cmd", b"forged-parent") for _, p in got_con), got_con


def test_acl_denial_is_reported_to_mqtt5_clients(fleet, clients):
    a = clients(fleet, fleet.identity("v5-a"), protocol=mqtt.MQTTv5).connect()
    assert not a.publish(t("v5-a", "telemetry"), b"ok").is_failure
    rc = a.publish(t("v5-b", "cmd", "x"), b"no")
    assert rc.is_failure and rc.value == 0x87  # Not authorized


def test_client_id_is_the_certificate_cn(fleet, clients):
    """A device cannot take over another device's session by claiming its client id."""
    victim = clients(fleet, fleet.identity("cid-b"), client_id="cid-b").connect()
    victim.subscribe(t("cid-b", "cmd", "#"))
    thief = clients(fleet, fleet.identity("cid-a"), client_id="cid-b").connect()
    con = clients(fleet, fleet.console()).connect()
    con.publish(t("cid-b", "cmd", "x"), b"still-here")
    assert victim.expect(t("cid-b", "cmd", "x"), b"still-here") == []
    assert victim.connected.is_set() and thief.connected.is_set()
    assert thief.drain() == []


def test_client_without_certificate_is_refused(fleet, clients):
    c = clients(fleet, None)
    assert not c.try_connect(timeout=5)


def test_client_with_certificate_from_another_ca_is_refused(fleet, clients, tmp_path):
    rogue = pki.init_ca(tmp_path / "rogue", dev=True)
    c = clients(fleet, fleet.identity("rogue-1", ca=rogue))
    assert not c.try_connect(timeout=5)
    # the same id with a fleet certificate gets in: the CA made the difference
    assert clients(fleet, fleet.identity("rogue-1")).try_connect()


def test_qos1_survives_broker_restart(tmp_path, clients):
    b = broker.Broker(tmp_path / "state")
    try:
        b.start()
        f = Fleet(b, tmp_path)
        dev_id = f.identity("persist-1")
        d = clients(f, dev_id, client_id="persist-1", clean=False).connect()
        d.subscribe(t("persist-1", "cmd", "#"))
        d.close()
        con = clients(f, f.console()).connect()
        con.publish(t("persist-1", "cmd", "x"), b"queued")
        con.close()
        old = b.pid
        b.restart()
        assert b.pid != old and b.running
        d2 = clients(f, dev_id, client_id="persist-1", clean=False).connect()
        assert d2.session_present
        assert d2.expect(t("persist-1", "cmd", "x"), b"queued") == []
    finally:
        b.stop()
    assert not b.running


# ------------------------------------------------------------------ errors

def test_port_taken_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        b = broker.Broker(tmp_path / "b", port=port)
        with pytest.raises(ToolError) as e:
            b.start()
        assert str(e.value) == "port %d is taken: choose another with --port or omit it" % port
        assert not b.running
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
        r = subprocess.run([sys.executable, "-m", "ictl", "broker", "start", "--dir", str(tmp_path / "c"), "--port", str(port)],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2
        assert r.stderr.splitlines() == ["ictl broker: error: port %d is taken: choose another with --port or omit it" % port]


def test_mosquitto_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker, "MOSQUITTO_CANDIDATES", (str(tmp_path / "nope"),))
    with pytest.raises(ToolError) as e:
        broker.Broker(tmp_path / "b").start()
    assert str(e.value) == "mosquitto not found: run `make setup` (apt-get install mosquitto)"


def test_broker_config_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    r = subprocess.run([sys.executable, "-m", "ictl", "broker", "config", "--dir", str(tmp_path), "--port", "18999", "--prefix", "fleet1"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    for line in ("per_listener_settings true", "listener 18999 127.0.0.1", "require_certificate true",
                 "use_identity_as_username true", "allow_anonymous false", "tls_version tlsv1.2",
                 "#   pattern read fleet1/%u/cmd/#", "#   user fleet-console"):
        assert line in r.stdout.splitlines()
    assert "readwrite" not in r.stdout


def test_production_options(tmp_path):
    """--host, --server-name: the listener address and the names the fleet CA
    puts in the broker certificate (devices check server_hostname against
    them)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    r = subprocess.run([sys.executable, "-m", "ictl", "broker", "config", "--dir", str(tmp_path), "--port", "8883",
                        "--host", "0.0.0.0", "--server-cert", "/srv/broker.crt"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().endswith("give both --server-cert and --server-key, or neither")
    r = subprocess.run([sys.executable, "-m", "ictl", "broker", "config", "--dir", str(tmp_path), "--port", "8883",
                        "--host", "0.0.0.0", "--server-cert", "/srv/broker.crt", "--server-key", "/srv/broker.key"],
                       capture_output=True, text=True, env=env, timeout=60)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and "listener 8883 0.0.0.0" in lines
    assert "certfile /srv/broker.crt" in lines and "keyfile /srv/broker.key" in lines
    b = broker.Broker(tmp_path / "b", server_names=("broker.example.com", "10.0.0.7"))
    b.port = 8883
    b.prepare()
    cert = pki.load_cert(os.path.join(b.pki_dir, pki.SERVER_CERT))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.com"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]


def test_broker_host_without_the_ca_key(tmp_path, clients):
    """Production: the broker host gets ca.crt, server.crt/key and the
    console's certificate, never ca.key. It must use them as they are, and
    neither make a new CA nor replace anything."""
    ca = pki.init_ca(tmp_path / "ca", dev=True)
    kp, cp = pki.ensure_server_cert(ca)
    ckp, ccp = pki.ensure_console_cert(ca)
    host = tmp_path / "host-pki"
    os.makedirs(host)
    for name in (pki.CA_CERT, pki.SERVER_CERT, pki.SERVER_KEY, pki.CONSOLE_CERT, pki.CONSOLE_KEY):
        with open(os.path.join(str(tmp_path / "ca"), name), "rb") as src, open(str(host / name), "wb") as dst:
            dst.write(src.read())
        os.chmod(str(host / name), 0o600)
    before = {n: open(str(host / n), "rb").read() for n in os.listdir(str(host))}
    b = broker.Broker(tmp_path / "state", pki_dir=host)
    try:
        b.start()
        f = Fleet.__new__(Fleet)
        f.broker, f.dir, f.ca = b, str(tmp_path), ca
        assert clients(f, f.identity("host-dev")).try_connect()
    finally:
        b.stop()
    assert {n: open(str(host / n), "rb").read() for n in os.listdir(str(host))} == before
    os.unlink(str(host / pki.SERVER_KEY))
    with pytest.raises(ToolError) as e:
        broker.Broker(tmp_path / "state2", pki_dir=host).start()
    assert "no CA key" in str(e.value) and "server.key" in str(e.value)


# ------------------------------------------------------------------ MicroPython client

MP_CLIENT = r'''
import sys, socket, ssl
port, ca, cert, key, host = sys.argv[1:6]
def rd(p):
    with open(p, "rb") as f:
        return f.read()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=rd(ca))
if cert != "-":
    ctx.load_cert_chain(rd(cert), rd(key))
s = socket.socket()
s.settimeout(10)
try:
    s.connect(socket.getaddrinfo("127.0.0.1", int(port))[0][-1])
    tls = ctx.wrap_socket(s, server_hostname=host)
    cid = b"mp"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid  # MQTT 3.1.1, clean session
    tls.write(bytes([0x10, len(body)]) + body)
    ack = tls.read(4)
    print("CONNACK", ack)
    if ack == b"\x20\x02\x00\x00":
        print("OK")
    tls.close()
except OSError as e:
    print("FAIL", repr(e))
'''


@pytest.fixture(scope="module")
def mp_identity(fleet):
    if not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("MicroPython unix port missing: run `make setup`")
    key, cert = pki.make_client_key_and_cert(fleet.ca, "mp-dev-1")
    files = {}
    for name, write, obj in (("ca.der", pki.write_cert_der, fleet.ca.cert), ("cert.der", pki.write_cert_der, cert),
                             ("key.der", pki.write_key_der, key)):
        files[name] = os.path.join(fleet.dir, "mp-" + name)
        write(files[name], obj)
    return files


def run_mp_client(fleet, ca, cert="-", key="-", host="localhost"):
    r = subprocess.run([MICROPYTHON, "-c", MP_CLIENT, str(fleet.broker.port), ca, cert, key, host],
                       capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def test_micropython_tls_client_with_certificate(fleet, mp_identity):
    out = run_mp_client(fleet, mp_identity["ca.der"], mp_identity["cert.der"], mp_identity["key.der"])
    assert "OK" in out.split(), out
    assert "as mp-dev-1 " in "\n".join(fleet.broker.log_tail(200))


def test_micropython_tls_client_without_certificate_fails(fleet, mp_identity):
    out = run_mp_client(fleet, mp_identity["ca.der"])
    assert "OK" not in out.split(), out


def test_micropython_verifies_the_broker(fleet, mp_identity, tmp_path):
    """CERT_REQUIRED really checks: a wrong CA or a wrong host name fails."""
    rogue = pki.init_ca(tmp_path, dev=True)
    pki.write_cert_der(str(tmp_path / "rogue.der"), rogue.cert)
    out = run_mp_client(fleet, str(tmp_path / "rogue.der"), mp_identity["cert.der"], mp_identity["key.der"])
    assert "OK" not in out.split(), out
    out = run_mp_client(fleet, mp_identity["ca.der"], mp_identity["cert.der"], mp_identity["key.der"], host="not-the-broker")
    assert "OK" not in out.split(), out


# ------------------------------------------------------------------ revocation

def test_revoked_certificate_is_refused_once_the_broker_reloads(tmp_path, clients):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from ictl import ca as fleet_ca

    b = broker.Broker(tmp_path / "broker")
    b.start()
    try:
        f = Fleet(b, tmp_path)
        assert os.path.exists(os.path.join(b.pki_dir, pki.CRL))  # an empty CRL from the start

        def enrol(dev):
            # As provisioning does it: a CSR, certified and recorded in the inventory.
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dev)])).sign(key, hashes.SHA256()))
            cert = fleet_ca.issue_from_csr(f.ca, csr, dev)
            fleet_ca.Inventory.of(f.ca).record_issued(cert, dev, "00" + dev[-10:], "test", None)
            base = str(tmp_path / dev)
            pki.write_key_pem(base + ".key", key)
            pki.write_cert_pem(base + ".crt", cert)
            return cert, (base + ".crt", base + ".key")

        gone, gone_id = enrol("ic-aaaaaaaaaaaa")
        _, keep_id = enrol("ic-bbbbbbbbbbbb")
        assert clients(f, gone_id).try_connect()
        rows = fleet_ca.revoke(f.ca, device_id="ic-aaaaaaaaaaaa", reason="decommissioned", operator="test")
        assert [r["serial"] for r in rows] == [fleet_ca.serial_hex(gone)]
        b.reload()
        refused = False
        for _ in range(20):  # mosquitto takes the SIGHUP asynchronously
            if not clients(f, gone_id).try_connect(timeout=2):
                refused = True
                break
        assert refused, "a revoked certificate still connects"
        assert clients(f, keep_id).try_connect()  # the others are untouched
        with open(os.path.join(b.pki_dir, pki.CRL), "rb") as fh:
            crl = x509.load_pem_x509_crl(fh.read())
        assert crl.is_signature_valid(f.ca.cert.public_key())
        entry = crl.get_revoked_certificate_by_serial_number(gone.serial_number)
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.cessation_of_operation
        assert len(list(crl)) == 1
        with pytest.raises(ToolError, match="no live certificate"):
            fleet_ca.revoke(f.ca, device_id="ic-aaaaaaaaaaaa", operator="test")
        assert fleet_ca.Inventory.of(f.ca).devices()[fleet_ca.serial_hex(gone)]["status"] == "revoked"
    finally:
        b.stop()
