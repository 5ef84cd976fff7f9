"""TLS failures of the device MQTT client against the real mosquitto: a broker
whose certificate comes from another CA, has expired, is not yet valid,
names another host, or is self-signed, is refused; so is a device whose own
certificate the broker does not trust. Each refusal raises TLSError with its
reason and records one security event. A good broker, same client, same
run, connects (the certificate made the difference).

Certificates are made at test time; each broker runs on 127.0.0.1 on a free
port. The client runs on the unix port under -X heapsize=64K."""
import datetime
import os
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from ictl import broker, pki  # noqa: E402
from ictl.sim.hostile import DeviceRunner  # noqa: E402

pytestmark = pytest.mark.timeout(120)

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def server_cert(ca, hosts=pki.DEFAULT_SERVER_HOSTS, not_before=None, days=30):
    key = pki.new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pki.SERVER_CN)])
    cert = ca.issue(key.public_key(), subject, days=days, usages=[ExtendedKeyUsageOID.SERVER_AUTH],
                    san=pki._san(hosts), not_before=not_before)
    return key, cert


def self_signed(hosts=pki.DEFAULT_SERVER_HOSTS):
    key = pki.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pki.SERVER_CN)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.SubjectAlternativeName(pki._san(hosts)), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


CASES = {
    # name: (make (key, cert) from the fleet CA and a rogue CA, expected reason)
    "good": (lambda fleet, rogue: server_cert(fleet), None),
    "wrong_ca": (lambda fleet, rogue: server_cert(rogue), "cert_untrusted"),
    "expired": (lambda fleet, rogue: server_cert(fleet, not_before=NOW - 30 * DAY, days=10), "cert_expired"),
    "not_yet_valid": (lambda fleet, rogue: server_cert(fleet, not_before=NOW + 2 * DAY), "cert_not_yet_valid"),
    "hostname_mismatch": (lambda fleet, rogue: server_cert(fleet, hosts=("broker.other.example",)), "hostname_mismatch"),
    "self_signed": (lambda fleet, rogue: self_signed(), "cert_untrusted"),
}

SCENARIO = r'''
for name, port in A["ports"]:
    # A new client and TLS context per case (an agent makes one for its
    # lifetime): collect the last one's garbage first, or the 4 KiB receive
    # buffer may find no contiguous room in the 64 KiB heap.
    gc.collect()
    c = client(port, timeout_s=5)
    try:
        c.connect()
        c.publish("ironclad/dev-1/telemetry", b"hello", qos=1)
        c.disconnect()
        out(case=[name, None, None, None])
    except MQTTError as e:
        out(case=[name, type(e).__name__, e.reason, str(e)])
report_events()
gc.collect()
out(heap=gc.mem_alloc() - BASE_HEAP)
'''


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    """One mosquitto per case, each with its server certificate."""
    base = tmp_path_factory.mktemp("tls")
    pki_dir = base / "pki"
    fleet = pki.init_ca(pki_dir, dev=True)
    rogue = pki.init_ca(base / "rogue", dev=True)
    started = []
    try:
        for name, (make, _) in CASES.items():
            key, cert = make(fleet, rogue)
            kp, cp = str(base / (name + ".key")), str(base / (name + ".crt"))
            pki.write_key_pem(kp, key)
            pki.write_cert_pem(cp, cert)
            b = broker.Broker(base / name, pki_dir=pki_dir, server_cert=cp, server_key=kp)
            b.start()
            started.append((name, b))
        yield pki_dir, base, started
    finally:
        for _, b in started:
            b.stop()


def test_broker_certificate_failures_are_refused_with_events(brokers):
    pki_dir, base, started = brokers
    dev = DeviceRunner(pki_dir, base / "dev")
    r = dev.run(SCENARIO, 0, ports=[(name, b.port) for name, b in started])
    assert r.ok, r
    got = {c[0]: c[1:] for c in r.get("case")}
    assert set(got) == set(CASES)
    for name, (_, reason) in CASES.items():
        cls, why, text = got[name]
        if reason is None:
            assert cls is None, (name, got[name])
        else:
            assert (cls, why) == ("TLSError", reason), (name, got[name])
    # one event per refusal (each client is its own outage), none for the good one
    want = sorted(reason for _, reason in CASES.values() if reason)
    assert sorted(e[1] for e in r.events) == want, r.events
    assert all(e[0] == "tls" and e[2] == "rejected" for e in r.events), r.events
    # the good broker saw the device, the others never got to MQTT
    good = dict(started)["good"]
    assert any("as dev-1 " in line for line in good.log_tail(100))
    assert r.get("heap")[0] < 12 * 1024, r.out


def test_device_certificate_from_another_ca_is_refused_by_the_broker(brokers, tmp_path):
    """The other side of mutual TLS: the broker refuses a device whose
    certificate the fleet CA did not issue; the device records it."""
    pki_dir, base, started = brokers
    rogue = base / "rogue"
    dev = DeviceRunner(rogue, tmp_path / "dev")  # identity issued by the rogue CA...
    dev.files["ca"] = str(tmp_path / "fleet-ca.der")  # ...while trusting the fleet's broker
    pki.write_cert_der(dev.files["ca"], pki.load_cert(os.path.join(str(pki_dir), pki.CA_CERT)))
    r = dev.run(SCENARIO, 0, ports=[("good", dict(started)["good"].port)])
    assert r.ok, r
    assert r.get("case") == [["good", "TLSError", "handshake", r.get("case")[0][3]]], r
    assert [e[:3] for e in r.events] == [["tls", "handshake", "rejected"]]
