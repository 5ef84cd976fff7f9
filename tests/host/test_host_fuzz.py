"""The host trusts nothing a device or the broker says (issue 14, host
findings 8 and 9), and the reduced slice of `make soak`'s host fuzz
(tools/ictl/measure/soak_hostfuzz.py): a rollout through the real mosquitto
with compromised devices beside honest ones, and the fleet console fed
hostile hellos, replays and mutations."""
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ictl import ROOT
from ictl import broker as fleet_broker
from ictl import ca as fleet_ca
from ictl import fleetkeys, pki
from ictl import update as host_update
from ictl.console import Console
from ictl.measure import soak_hostfuzz
from ictl.sim import peers

pytestmark = pytest.mark.timeout(240)


# ------------------------------------------------------------ rollout (9)

def test_every_reported_field_is_checked():
    uid = "ab" * 16
    ok = {"state": "downloading", "id": uid, "next": 2, "want": 8, "pct": 20}
    assert host_update.check_report(json.dumps(ok).encode(), 10) == ok
    assert host_update.check_report(b'{"state": "confirmed", "ver": 2, "slot": "app_b"}', 10)["ver"] == 2
    for bad in ({"next": "x"}, {"next": -1}, {"next": 10}, {"next": 3.0}, {"next": True}, {"next": None},
                {"want": 0}, {"want": 9}, {"next": 8, "want": 3}, {"want": "8"}, {"want": [1]},
                {"pct": "abc"}, {"pct": 101}, {"pct": 1e308}, {"state": "DOWNLOADING"}, {"state": ["x"]},
                {"id": [uid]}, {"id": uid.upper()}, {"reason": "r" * 41}, {"reason": 1}, {"slot": {"a": 1}},
                {"ver": -1}):
        with pytest.raises(ValueError):
            host_update.check_report(json.dumps(dict(ok, **bad)).encode(), 10)
    for raw in (b"", b"\xff\xfe{}", b"[" * 400 + b"]" * 400, b"[]", b"7", json.dumps(dict(ok, x="y" * 1100)).encode()):
        with pytest.raises(ValueError):
            host_update.check_report(raw, 10)


def test_rollout_finishes_for_honest_devices_beside_compromised_ones(tmp_path):
    # Before: a non-numeric `next` raised inside paho's network thread, which
    # died, and every other device stalled.
    st = soak_hostfuzz.rollout_fuzz(str(tmp_path), 300, seed=11, honest=2, hostile=2, chunks=6, timeout=90)
    assert st["failures"] == 0, st["notes"]
    assert st["sent"] == 300 and st["refused"] > 200, st


def test_a_callback_that_raises_does_not_end_the_client_thread(tmp_path, monkeypatch):
    # Whatever slips past the checks (here: a check that raises) is counted
    # by the guard; paho's thread lives on and the honest device finishes.
    real = host_update.check_report
    raised = []

    def check(payload, n):
        if b"hostile" in payload:
            raised.append(1)
            raise RuntimeError("a bug")
        return real(payload, n)

    monkeypatch.setattr(host_update, "check_report", check)
    monkeypatch.setattr(peers, "hostile_report", lambda rng, n, uid: (b'{"hostile": 1}', "raise"))
    st = soak_hostfuzz.rollout_fuzz(str(tmp_path), 20, seed=3, honest=1, hostile=1, chunks=3, timeout=60)
    assert raised
    assert [n for n in st["notes"] if "raised" not in n] == [], st["notes"]
    assert st["failures"] == len(raised)  # each counted by the guard, nothing else failed


def test_ictl_update_publish_beside_a_compromised_device(tmp_path):
    # The command an operator runs: the honest device finishes, the
    # compromised one's reports are refused and counted, exit status 1 (one
    # device did not get there).
    br = fleet_broker.Broker(tmp_path / "broker", operators=(pki.CONSOLE_ID, host_update.UPDATER_ID))
    br.start()
    try:
        ca = br.load_ca()
        patch = os.urandom(5 * host_update.CHUNK)
        upd = host_update.Update.seal(patch, "app", "esp32-sim", 2, 2, None,
                                      {"len": len(patch), "sha": hashlib.sha256(patch).digest()}, "none")
        honest = peers.UpdatePeer(br, "good", upd, ca).start()
        k = ec.generate_private_key(ec.SECP256R1())
        evil = peers.connect(peers.client("evil", br.ca_path, pki.issue_client_cert(ca, k.public_key(), "evil"), k),
                             br.host, br.port)
        sign = rsa.generate_private_key(65537, 3072)
        upd.save(str(tmp_path / "upd" / "full"),
                 {"good": upd.metadata("good", fleetkeys.public_point(honest.key), sign, "k"),
                  "evil": upd.metadata("evil", fleetkeys.public_point(k), sign, "k")})
        proc = subprocess.Popen([sys.executable, "-m", "ictl", "update", "publish", str(tmp_path / "upd"),
                                 "--broker", br.state_dir, "--timeout", "60"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
        end = time.monotonic() + 30
        while honest.state == "idle" and time.monotonic() < end:
            time.sleep(0.05)
        topic = "%s/evil/%s" % (br.prefix, host_update.REPORT_KIND)
        for rep in ({"state": "downloading", "next": "x", "want": 1}, {"state": "downloading", "next": 0, "want": 99},
                    {"state": "downloading", "next": -1, "want": 1}, {"state": "rejected", "pct": "abc"}, [1]):
            evil.publish(topic, json.dumps(rep), qos=1).wait_for_publish(5)
        while honest.state != "applied" and time.monotonic() < end:
            honest.tick()
            time.sleep(0.1)
        evil.publish(topic, json.dumps({"state": "rejected", "reason": "gave_up"}), qos=1).wait_for_publish(5)
        out, err = proc.communicate(timeout=90)
        honest.stop()
        evil.disconnect()
        evil.loop_stop()
    finally:
        br.stop()
    assert proc.returncode == 1, out + err
    assert honest.state == "applied" and not honest.bad_chunks
    lines = out.splitlines()
    assert any(line.split()[:2] == ["good", "applied"] for line in lines), out
    assert any(line.split()[:2] == ["evil", "rejected"] for line in lines), out
    assert any(line.startswith("evil") and "5 invalid reports refused" in line for line in lines), out


# ------------------------------------------------------------ console (8)

@pytest.fixture
def fleet(tmp_path):
    ca_dir = str(tmp_path / "pki")
    ca = pki.init_ca(ca_dir, dev=True)
    key = ec.generate_private_key(ec.SECP256R1())
    con = Console("127.0.0.1", 1, os.path.join(ca_dir, pki.CA_CERT), None, None, key,
                  state_path=str(tmp_path / "console.json"))
    return ca, key, con


def _ok(out):
    return [m for m in out if not m.alarm and m.body is not None]


def _known(con, ca, key, readings=3):
    """A device the console knows, and its readings (each accepted)."""
    dev = peers.DeviceDouble(ca, "d1", key.public_key())
    con.handle(*dev.hello())
    msgs = [dev.reading() for _ in range(readings)]
    for m in msgs:
        assert _ok(con.handle(*m))
    return dev, msgs


def test_a_new_key_is_an_alarm_and_history_is_kept(fleet):
    ca, key, con = fleet
    old = peers.DeviceDouble(ca, "d1", key.public_key())
    assert _ok(con.handle(*old.hello()))
    assert _ok(con.handle(*old.events(2))) and _ok(con.handle(*old.reading()))
    head = con.devices["d1"]["events"]
    new = peers.DeviceDouble(ca, "d1", key.public_key())  # re-provisioned: a new key
    new.seq, new.head = old.seq, old.head
    out = con.handle(*new.hello())
    assert [m for m in out if m.alarm and "key changed" in m.text], out
    assert con.devices["d1"]["events"] == head  # before: reset to nothing
    assert _ok(con.handle(*new.events(1)))  # the chain goes on under the new key
    new.seq += 1  # one record never arrives
    out = con.handle(*new.events(1))
    assert [m for m in out if m.alarm and "missing" in m.text], out


def test_a_superseded_certificate_is_refused(fleet, tmp_path):
    ca, key, con = fleet
    old, captured = _known(con, ca, key)
    new = peers.DeviceDouble(ca, "d1", key.public_key())
    con.handle(*new.hello())
    assert _ok(con.handle(*new.reading()))
    # The broker publishes the old certificate's hello, then replays.
    out = con.handle(*old.hello())
    assert out[0].alarm and "superseded" in out[0].text, out
    assert con.devices["d1"]["pub"] == fleetkeys.public_point(new.key)
    for m in captured:
        assert not _ok(con.handle(*m))
    # Remembered across a restart of the console.
    con2 = Console(con.host, con.port, con.ca_path, None, None, key, state_path=con.state_path)
    assert con2.handle(*old.hello())[0].alarm


def test_the_inventory_and_the_crl_decide(fleet):
    ca, key, con = fleet
    inv = fleet_ca.Inventory.of(ca)
    first = peers.DeviceDouble(ca, "d1", key.public_key())
    second = peers.DeviceDouble(ca, "d1", key.public_key())
    for d in (first, second):
        inv.record_issued(d.cert, "d1", "u1", "test", None)
    # A console that never saw d1: the inventory says the first is superseded.
    out = con.handle(*first.hello())
    assert out[0].alarm and "newer certificate" in out[0].text, out
    assert _ok(con.handle(*second.hello()))
    assert _ok(con.handle(*second.reading()))
    fleet_ca.revoke(ca, device_id="d1", reason="key_compromise", operator="test")
    out = con.handle(*second.reading())  # the CRL is read again when it changes
    assert out[0].alarm and "revoked" in out[0].text, out
    out = con.handle(*second.hello())
    assert out[0].alarm and "revoked" in out[0].text, out


def test_a_certificate_the_inventory_never_recorded_for_a_known_device_is_refused(fleet):
    # Signed by the fleet CA with the right CN, but not one the CA's
    # inventory records for d1, which it lists others for: issued behind
    # the inventory's back (a stolen CA key, a hand-made certificate).
    ca, key, con = fleet
    inv = fleet_ca.Inventory.of(ca)
    real = peers.DeviceDouble(ca, "d1", key.public_key())
    inv.record_issued(real.cert, "d1", "u1", "test", None)
    rogue = peers.DeviceDouble(ca, "d1", key.public_key())
    out = con.handle(*rogue.hello())
    assert out[0].alarm and "not in the CA's inventory" in out[0].text, out
    assert not _ok(con.handle(*rogue.reading()))
    assert not [m for m in con.handle(*real.hello()) if m.alarm]
    assert _ok(con.handle(*real.reading()))
    # An id the inventory has never heard of gets no verdict from it.
    other = peers.DeviceDouble(ca, "d2", key.public_key())
    assert not [m for m in con.handle(*other.hello()) if m.alarm]


def test_an_expired_crl_refuses_every_certificate_until_it_is_reissued(fleet):
    # A CRL past its nextUpdate cannot say what was revoked since: the
    # console fails closed, as the broker's OpenSSL does with the same file.
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca, key, con = fleet
    dev = peers.DeviceDouble(ca, "d1", key.public_key())
    assert not [m for m in con.handle(*dev.hello()) if m.alarm]
    assert _ok(con.handle(*dev.reading()))
    now = datetime.datetime.now(datetime.timezone.utc)
    stale = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
             .last_update(now - datetime.timedelta(days=40)).next_update(now - datetime.timedelta(days=10))
             .sign(ca.key, hashes.SHA256()))
    pki.write_public(os.path.join(ca.dir, pki.CRL), stale.public_bytes(serialization.Encoding.PEM))
    out = con.handle(*dev.reading())
    assert not _ok(out) and out[0].alarm and "expired" in out[0].text, out
    fleet_ca.write_crl(ca)  # `ictl ca crl`
    assert _ok(con.handle(*dev.reading()))


def test_console_fuzz_slice(tmp_path):
    st = soak_hostfuzz.console_fuzz(str(tmp_path), 400, seed=5)
    assert st["failures"] == 0, st["notes"]
    assert st["sent"] == 400


def test_marks_from_an_older_state_file_still_hold(fleet):
    # A state file from before the marks were kept per key epoch (keyed by
    # topic kind alone): they apply to every epoch it lists, not dropped.
    import json as _json

    ca, key, con = fleet
    dev, msgs = _known(con, ca, key)
    with open(con.state_path) as f:
        data = _json.load(f)
    d = data["devices"]["d1"]
    d["high"] = {k.split("/", 1)[1]: v for k, v in d["high"].items()}
    d["recent"] = {k.split("/", 1)[1]: v for k, v in d["recent"].items()}
    for k in ("serial", "nb", "old"):
        del d[k]
    with open(con.state_path, "w") as f:
        _json.dump(data, f)
    con2 = Console(con.host, con.port, con.ca_path, None, None, key, state_path=con.state_path)
    for m in msgs:
        assert not _ok(con2.handle(*m))
    assert _ok(con2.handle(*dev.reading()))


def test_odd_plaintexts_from_a_compromised_device_are_alarms_not_crashes(fleet):
    # It holds its keys, so these open; handle() must not raise on them
    # (before: TypeError from sorted() over mixed keys and from str + int,
    # decimal.InvalidOperation and TypeError out of cbor2).
    import cbor2

    ca, key, con = fleet
    dev = peers.DeviceDouble(ca, "d1", key.public_key())
    con.handle(*dev.hello())
    for kind, pt in (("telemetry", cbor2.dumps({"id": "d1", 1: 2, "t": 3})),
                     ("reply", cbor2.dumps({"id": "d1", "cmd": 1, "ok": False, "reason": 7})),
                     ("telemetry", bytes.fromhex("a1818000")),  # {[0]: 0}: an unhashable key
                     ("telemetry", bytes.fromhex("c4821b7fffffffffffffff01"))):  # a decimal fraction
        out = con.handle(*dev.seal_raw(kind, pt))
        assert len(out) == 1, out


def test_a_device_asking_in_a_loop_is_rationed(tmp_path, monkeypatch):
    # Every report well-formed, each asking for a window: the rollout sends
    # at most SERVE_FACTOR (4) times the update (then a window per
    # THROTTLE_S), not the update once per request (100 x 4 chunks before).
    monkeypatch.setattr(peers, "hostile_report", lambda rng, n, uid: (
        json.dumps({"state": "downloading", "id": uid, "next": 0, "want": min(host_update.WINDOW, n)}).encode(),
        "valid"))
    st = soak_hostfuzz.rollout_fuzz(str(tmp_path), 100, seed=2, honest=1, hostile=1, chunks=4, timeout=60)
    assert st["failures"] == 0, st["notes"]
    chunk = host_update.CHUNK + 21 + host_update.TAG
    served_to_hostile = st["bytes"] // chunk - 4 - 4  # minus the honest device's chunks and slack
    assert host_update.SERVE_FACTOR == 4 and served_to_hostile <= 4 * 4 + 4, (served_to_hostile, st)


def test_made_up_epochs_in_hellos_do_not_push_out_the_real_one(fleet):
    import cbor2

    ca, key, con = fleet
    dev, _ = _known(con, ca, key, readings=1)
    topic = dev.hello()[0]
    for _ in range(6):  # the broker republishes the hello with epochs of its own
        con.handle(topic, cbor2.dumps({"cert": pki.cert_der(dev.cert), "epoch": os.urandom(8)}))
    assert _ok(con.handle(*dev.reading()))
