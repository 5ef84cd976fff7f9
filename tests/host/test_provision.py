"""USB provisioning end to end: `ictl provision` with the real mpremote
against a virtual board, the real fleet CA and mosquitto requiring client
certificates; then the board's mutual-TLS connection; then a scan of
everything the run left behind for the private key and the storage key; and
each refusal leaving the board clean."""
import base64
import json
import os
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mphelp import MPREMOTE, ROOT, run_mp
from ictl import ToolError, broker as fleet_broker, pki
from ictl.sim import board as vboard
from ictl import ca as fleet_ca
from ictl.sim import device as sim_device
from ictl import provision
from ictl.sim import wifisim

pytestmark = pytest.mark.timeout(180)

# The library runs from source on the unix port and is compiled into the
# heap; a TLS handshake (mbedTLS allocates there too) on top of the keystore
# and MQTT client needs more than the 96 KiB a test default gives. On a board
# the library is frozen into flash. 192: the stand-ins held to the port
# profile, the simulated radio and the merged library (160 ran out in mqtt).
BOARD_HEAP_KIB = 192
# Each board's simulated access point (ictl.wifisim); its passphrase goes to
# `ictl provision` through the environment, never an argument.
WIFI = (wifisim.DEFAULT_SSID, "test passphrase " + os.urandom(6).hex())


class CapturingBoard(vboard.VirtualBoard):
    """A virtual board that also records what the host sends it: together
    with console.log (what the board sends) the whole USB traffic."""

    def start(self):
        self.sent = open(os.path.join(self.devdir, "usb-from-host.log"), "ab")
        return super().start()

    def _from_client(self, data):
        self.sent.write(data)
        self.sent.flush()
        super()._from_client(data)

    def stop(self):
        super().stop()
        self.sent.close()


class TcpCapture:
    """127.0.0.1 relay in front of the broker that keeps every byte both ways."""

    def __init__(self, port):
        self.target = port
        self.data = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                with self.lock:
                    self.data += d
                dst.sendall(d)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    b = fleet_broker.Broker(d / "broker")
    b.start()
    key = ec.generate_private_key(ec.SECP256R1())
    pub = d / "fleet-data.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    b.fleet_pub_path = str(pub)
    b.fleet_pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def board(tmp_path):
    d = str(tmp_path / "dev")
    sim_device.create(d)
    wifisim.simulated_ap(d, *WIFI)
    b = CapturingBoard(d, heap_kib=BOARD_HEAP_KIB)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def ictl(*args, stdin=subprocess.DEVNULL):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"), ICTL_WIFI_PASSPHRASE=WIFI[1])
    return subprocess.run([sys.executable, "-m", "ictl", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=stdin, cwd=ROOT)


def provision_cmd(fleet, port, *extra, log=None, broker_port=None):
    args = ["provision", "--port", port, "--ca-dir", fleet.pki_dir, "--broker-host", "127.0.0.1",
            "--broker-port", str(broker_port or fleet.port), "--fleet-data-pub", fleet.fleet_pub_path,
            "--operator", "tech-7", "--wifi-ssid", WIFI[0]]
    if log:
        args += ["--log", log]
    return ictl(*args, *extra)


def board_info(b):
    return provision.Board(b.port).call("info")


def make(fleet, b, **kw):
    """A Provisioner for board b (in-process, still the real mpremote)."""
    kw.setdefault("log_path", os.path.join(b.devdir, "..", "provision.jsonl"))
    return kw.pop("cls", provision.Provisioner)(
        b.port, pki.load_ca(fleet.pki_dir), provision.broker_settings("127.0.0.1", fleet.port),
        fleet.fleet_pub, out=lambda s: None, wifi=WIFI, **kw)


def inventory(fleet):
    return fleet_ca.Inventory(os.path.join(fleet.pki_dir, fleet_ca.INVENTORY))


def log_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


DEVICE_TLS = """
import gc
from ironclad.mqtt import MQTTClient, MQTTError
gc.collect()
from ironclad import net, provision
me = provision.require()
net.radio_on()
assert net.Station.provisioned(me._ks).up(10000), "no Wi-Fi"
gc.collect()
c = MQTTClient(me.device_id, me.host, me.port, me.tls_context(), server_hostname=me.hostname)
try:
    c.connect()
    c.publish(me.topic("telemetry"), b"hello over mutual TLS", qos=1)
    c.disconnect()
    print("TLS-OK", me.device_id)
except MQTTError as e:
    print("TLS-FAILED", e.reason)
"""


def device_exec(b, code):
    r = subprocess.run([MPREMOTE, "connect", b.port, "exec", code], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def console(fleet, topic):
    q = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pki.CONSOLE_ID)
    c.tls_set(ca_certs=fleet.ca_path, certfile=fleet.console_cert_path, keyfile=fleet.console_key_path,
              cert_reqs=ssl.CERT_REQUIRED)
    subscribed = threading.Event()
    c.on_message = lambda cl, ud, msg: q.put((msg.topic, msg.payload))
    c.on_connect = lambda cl, ud, fl, rc, props: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(fleet.host, fleet.port)
    c.loop_start()
    assert subscribed.wait(10)
    return c, q


def secrets_of(devdir):
    """The board's private key and storage key, read straight from its
    flash (the board is stopped; nothing of this goes through a log)."""
    code = ("import binascii, esp32\nfrom ironclad.keystore import KeyStore, KEY_NAMESPACE\n"
            "k = KeyStore().get('device_key')\nb = bytearray(32)\nesp32.NVS(KEY_NAMESPACE).get_blob('sk', b)\n"
            "print(binascii.hexlify(k).decode(), binascii.hexlify(b).decode())")
    r = run_mp(code, devdir, heap_kib=128)
    assert r.returncode == 0, r.stderr
    sec1, sk = (bytes.fromhex(x) for x in r.stdout.split())
    d = serialization.load_der_private_key(sec1, None).private_numbers().private_value.to_bytes(32, "big")
    return {"private key": d, "private key (SEC1 DER)": sec1, "storage key": sk}


def forms(secret):
    """The ways a secret could be written down."""
    return {secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.b64encode(secret)[:40]}


def scan(blobs, secrets):
    """[(secret name, where)] for every secret found in any form."""
    hits = []
    for where, data in blobs.items():
        for name, s in secrets.items():
            if any(f in data for f in forms(s)):
                hits.append((name, where))
    return hits


def files_under(*roots):
    out = {}
    for root in roots:
        for dp, _, fns in os.walk(root):
            for fn in fns:
                p = os.path.join(dp, fn)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        out[p] = f.read()
    return out


def test_provision_then_mutual_tls_and_no_secret_anywhere(fleet, board, tmp_path):
    cap = TcpCapture(fleet.port)
    log = str(tmp_path / "provision.jsonl")
    try:
        r = provision_cmd(fleet, board.port, log=log, broker_port=cap.port)
        assert r.returncode == 0, r.stdout + r.stderr
        for n in range(1, 7):
            assert "[%d/6]" % n in r.stdout
        info = board_info(board)
        dev = info["device_id"]
        # a pseudonym by default, not the chip's MAC address
        assert info["provisioned"] and dev.startswith("ic-") and info["uid"] not in dev

        # the record: who, when, device, fingerprint, firmware, outcome
        (row,) = log_rows(log)
        assert row["outcome"] == "ok" and row["operator"] == "tech-7" and row["device_id"] == dev
        assert row["uid"] == info["uid"] and row["time"] and "ironclad" in row["firmware"]
        assert row["fingerprint"].replace(":", "").lower() == info["fingerprint"]
        inv = inventory(fleet).devices()
        (c,) = [c for c in inv.values() if c["device_id"] == dev]
        assert c["status"] == "provisioned" and c["fingerprint"] == row["fingerprint"] and c["operator"] == "tech-7"

        # The device connects with its own key, through the capture relay, to
        # mosquitto which requires a client certificate from the fleet CA.
        cl, q = console(fleet, "%s/%s/telemetry" % (fleet.prefix, dev))
        try:
            out = device_exec(board, DEVICE_TLS)
            assert "TLS-OK " + dev in out, out
            topic, payload = q.get(timeout=10)
            assert topic == "%s/%s/telemetry" % (fleet.prefix, dev) and payload == b"hello over mutual TLS"
        finally:
            cl.loop_stop()
            cl.disconnect()
        with open(fleet.log_path) as f:
            assert "u'%s'" % dev in f.read()  # authenticated as its certificate CN
        tls_bytes = bytes(cap.data)
        assert len(tls_bytes) > 1000 and tls_bytes[:1] == b"\x16"  # a TLS handshake went through
        ictl_out = (r.stdout + r.stderr).encode()
    finally:
        cap.close()
    board.stop()

    secrets = secrets_of(board.devdir)
    # The Wi-Fi passphrase too: it crossed the USB link sealed to the board's key.
    secrets["Wi-Fi passphrase"] = WIFI[1].encode()
    blobs = files_under(board.devdir, fleet.state_dir)
    del blobs[os.path.join(board.devdir, wifisim.FILE)]  # the simulated AP's own configuration
    blobs.update({"log " + log: open(log, "rb").read(), "captured TLS traffic": tls_bytes, "ictl output": ictl_out})
    assert any("console.log" in k for k in blobs) and any("usb-from-host" in k for k in blobs)
    assert any(k.endswith("flash.bin") for k in blobs) and any(k.endswith("mosquitto.log") for k in blobs)
    assert scan(blobs, secrets) == []
    # The scan finds what is there: the same keys planted in a copy of a log.
    planted = dict(blobs, planted=b"x" + secrets["private key"].hex().encode() + secrets["storage key"])
    assert sorted(scan(planted, secrets)) == [("private key", "planted"), ("storage key", "planted")]
    board.start()  # the fixture stops it again


def test_refuses_provisioned_board_unless_reprovision(fleet, board, tmp_path):
    log = str(tmp_path / "p.jsonl")
    assert provision_cmd(fleet, board.port, log=log).returncode == 0
    first = board_info(board)
    r = provision_cmd(fleet, board.port, log=log)
    assert r.returncode == 2 and "already provisioned" in r.stderr and "--reprovision" in r.stderr
    r = provision_cmd(fleet, board.port, "--reprovision", log=log)  # no terminal to confirm at
    assert r.returncode == 2 and "--yes" in r.stderr
    with pytest.raises(ToolError, match="not confirmed"):
        make(fleet, board, reprovision=True, confirm=lambda q: False, log_path=log).run()
    assert board_info(board) == first  # nothing changed
    r = provision_cmd(fleet, board.port, "--reprovision", "--yes", log=log)
    assert r.returncode == 0, r.stderr
    assert "wiping" in r.stdout
    again = board_info(board)
    assert again["provisioned"] and again["device_id"] == first["device_id"]
    assert again["fingerprint"] != first["fingerprint"]
    # the first certificate is revoked (superseded): inventory and the CA's CRL
    assert "revoked its earlier certificate" in r.stdout
    rows = list(fleet_ca.Inventory.of(fleet.load_ca()).devices().values())
    def fp(x):
        return x["fingerprint"].replace(":", "").lower()  # the inventory's notation, the board's
    old = [x for x in rows if fp(x) == first["fingerprint"]]
    assert len(old) == 1 and old[0]["status"] == "revoked" and old[0]["reason"] == "superseded", rows
    assert [x["status"] for x in rows if fp(x) == again["fingerprint"]] == ["provisioned"]
    with open(os.path.join(fleet.pki_dir, pki.CRL), "rb") as f:
        crl = x509.load_pem_x509_crl(f.read())
    assert crl.get_revoked_certificate_by_serial_number(int(old[0]["serial"], 16)) is not None
    outcomes = [x["outcome"] for x in log_rows(log)]
    assert outcomes == ["ok", "failed", "failed", "failed", "ok"]
    # and it works: the new identity connects
    assert "TLS-OK" in device_exec(board, DEVICE_TLS)


def test_wrong_port_is_one_line(fleet, tmp_path):
    r = provision_cmd(fleet, str(tmp_path / "no-such-tty"))
    assert r.returncode == 2 and "cannot open" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_board_without_the_agent_firmware(fleet, tmp_path):
    # A stock MicroPython: the same simulated chip, no Ironclad in its firmware.
    fw = tmp_path / "stock-fw"
    shutil.copytree(os.path.join(ROOT, "firmware", "unix"), fw / "firmware" / "unix")
    d = str(tmp_path / "dev")
    sim_device.create(d)
    with vboard.VirtualBoard(d, env={"ESPSIM_FIRMWARE": str(fw)}) as b:
        assert "stock" in device_exec(b, "print('stock')")
        r = provision_cmd(fleet, b.port)
    assert r.returncode == 2 and "does not run the Ironclad firmware" in r.stderr


class TamperedCsr(provision.Provisioner):
    def csr_received(self, csr_der):
        bad = bytearray(csr_der)
        bad[-5] ^= 0x40  # inside the signature
        return bytes(bad)


class OtherKeyCert(provision.Provisioner):
    def cert_to_send(self, cert):
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        return pki.issue_client_cert(self.ca, other, self.record["device_id"])


class OtherDeviceCert(provision.Provisioner):
    def cert_to_send(self, cert):
        return pki.issue_client_cert(self.ca, cert.public_key(), "ic-someone-else")


class Unplugged(provision.Provisioner):
    def cert_to_send(self, cert):
        raise KeyboardInterrupt


@pytest.mark.parametrize("cls, message, issued", [
    (TamperedCsr, "signature does not verify", False),
    (OtherKeyCert, "for another key", True),
    (OtherDeviceCert, "for another device", True),
])
def test_bad_csr_or_certificate_leaves_board_clean(fleet, board, tmp_path, cls, message, issued):
    log = str(tmp_path / "p.jsonl")
    with pytest.raises(ToolError, match=message) as e:
        make(fleet, board, cls=cls, log_path=log).run()
    assert "wiped" in str(e.value)
    info = board_info(board)
    assert not info["provisioned"] and not info["partial"]
    (row,) = log_rows(log)
    assert row["outcome"] == "failed" and message in row["error"]
    mine = [c for c in inventory(fleet).devices().values() if c["uid"] == info["uid"]]
    assert [c["status"] for c in mine] == (["abandoned"] if issued else [])
    # simply run it again
    make(fleet, board, log_path=log).run()
    assert board_info(board)["provisioned"]


def test_interrupted_half_way_then_rerun(fleet, board, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make(fleet, board, cls=Unplugged).run()
    info = board_info(board)
    assert not info["provisioned"] and not info["partial"]
    # The host dies right after the board made its key (no clean-up at all):
    # the board is not provisioned, and the next run starts by wiping it.
    provision.Board(board.port).call("start", "ic-" + info["uid"])
    left = board_info(board)
    assert left["partial"] and not left["provisioned"]
    assert "not provisioned" in device_exec(board, "from ironclad import provision\nprovision.require()")
    make(fleet, board).run()
    assert board_info(board)["provisioned"]


def test_shared_and_default_ids_refused_before_touching_the_board(fleet, board, tmp_path):
    # another board already holds this device id
    other = str(tmp_path / "other")
    sim_device.create(other)
    with CapturingBoard(other, heap_kib=BOARD_HEAP_KIB) as b2:
        make(fleet, b2, device_id="shared-id-1").run()
    with pytest.raises(ToolError, match="already belongs to another board"):
        make(fleet, board, device_id="shared-id-1").run()
    assert not board_info(board)["partial"]
    # reserved and malformed ids
    for bad in ("fleet-console", "a/b", ""):
        r = provision_cmd(fleet, board.port, "--device-id", bad)
        assert r.returncode == 2 and "device id" in r.stderr
    assert not board_info(board)["partial"]


def test_all_zero_unique_id_refused(fleet, tmp_path):
    d = str(tmp_path / "dev")
    sim_device.create(d)
    cfg = json.load(open(os.path.join(d, "device.json")))
    cfg["unique_id"] = "000000000000"
    json.dump(cfg, open(os.path.join(d, "device.json"), "w"))
    with CapturingBoard(d, heap_kib=BOARD_HEAP_KIB) as b:
        r = provision_cmd(fleet, b.port)
        assert r.returncode == 2 and "default unique id" in r.stderr
        assert not board_info(b)["partial"]


def test_wrong_broker_hostname_fails_the_handshake(fleet, board):
    # The board checks the broker's certificate name, not only its CA.
    p = make(fleet, board)
    p.broker = provision.broker_settings("127.0.0.1", fleet.port, hostname="not-the-broker.example")
    p.run()
    assert "TLS-FAILED hostname_mismatch" in device_exec(board, DEVICE_TLS)


def test_fleet_data_key_formats(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    for name, data in (("pem", key.public_key().public_bytes(serialization.Encoding.PEM, spki)),
                       ("der", key.public_key().public_bytes(serialization.Encoding.DER, spki)),
                       ("raw", point), ("hex", point.hex().encode() + b"\n")):
        (tmp_path / name).write_bytes(data)
        assert provision.load_fleet_pub(str(tmp_path / name)) == point
    # the private half is refused (technicians never need it), and so is anything not P-256
    (tmp_path / "priv").write_bytes(pki.key_pem(key))
    (tmp_path / "p384").write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, spki))
    (tmp_path / "offcurve").write_bytes(b"\x04" + b"\x01" * 64)
    for bad in ("priv", "p384", "offcurve", "missing"):
        with pytest.raises(ToolError):
            provision.load_fleet_pub(str(tmp_path / bad))


def test_broker_certified_by_another_ca_needs_broker_ca(fleet, board, tmp_path):
    # A broker whose server certificate comes from another CA (as AWS IoT
    # Core's comes from Amazon's root), while it still admits devices by the
    # fleet CA: a board given only the fleet CA refuses it; with --broker-ca
    # it connects, mutual TLS, hostname checked.
    cloud = pki.init_ca(tmp_path / "cloud-ca", dev=True)
    key_path, cert_path = pki.ensure_server_cert(cloud)
    b2 = fleet_broker.Broker(tmp_path / "cloud-broker", pki_dir=fleet.pki_dir, server_cert=cert_path, server_key=key_path)
    b2.start()
    try:
        r = provision_cmd(fleet, board.port, broker_port=b2.port, log=str(tmp_path / "p.jsonl"))
        assert r.returncode == 0, r.stderr
        out = device_exec(board, DEVICE_TLS)
        assert "TLS-FAILED" in out and "tls rejected cert_untrusted" in out, out  # the fleet CA does not vouch for it
        r = provision_cmd(fleet, board.port, "--reprovision", "--yes", "--broker-ca", cloud.cert_path,
                          broker_port=b2.port, log=str(tmp_path / "p.jsonl"))
        assert r.returncode == 0, r.stderr
        assert "TLS-OK" in device_exec(board, DEVICE_TLS)
        # a file with no certificate in it: one line, the board left as it was
        bad = tmp_path / "not-a-ca.pem"
        bad.write_text("hello\n")
        before = board_info(board)
        r = provision_cmd(fleet, board.port, "--reprovision", "--yes", "--broker-ca", str(bad), broker_port=b2.port)
        assert r.returncode == 2 and "holds no certificate" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert board_info(board) == before
    finally:
        b2.stop()
