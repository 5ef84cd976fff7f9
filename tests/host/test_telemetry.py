"""Device payloads against implementations nobody here wrote, and the fleet
console's checks, without a broker.

The device (ironclad.telemetry on the unix port, real NVS stand-in) seals
readings and event batches for a device key and fleet data key made here
with `cryptography`; pycose opens them (keys derived with cryptography's
ECDH and HKDF: tools/ictl/fleetkeys.py), cbor2 decodes the payloads. The
console (tools/ictl/console.py) is then fed the same messages, and messages
tampered with the way an attacker with the device's flash would.
"""
import hashlib
import json
import os
import sys

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from pycose.algorithms import AESCCM1664128
from pycose.headers import Algorithm, PartialIV
from pycose.keys import SymmetricKey
from pycose.messages import Enc0Message

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mphelp  # noqa: E402
from ictl.sim import device as sim_device  # noqa: E402
from ictl import fleetkeys, pki  # noqa: E402
from ictl.console import Console, decode_event  # noqa: E402

DEV = "dev-0042"
PREFIX = "ironclad"
TOPIC = "%s/%s/telemetry" % (PREFIX, DEV)
EV_TOPIC = "%s/%s/events" % (PREFIX, DEV)
HEAP = 256  # the library loads from source on the unix port (see tests/device/test_telemetry.py)

# Device side: seal what the job file asks for, print one hex line per
# message. "ev": events to record; "tamper": (slot, hex) ring slots to
# overwrite afterwards, as someone with the flash would; "send": seal and
# "publish" the unsent events.
SEAL = r"""
import json, sys
from binascii import hexlify, unhexlify as u
from ironclad import events, nonce, telemetry
job = json.loads(open(sys.argv[1]).read())
# A board's clock reads 2000-01-01 until the agent sets it (clock.ensure):
# set it, so readings carry a wall time ("ts").
import machine
machine.RTC().datetime((2026, 12, 1, 0, 0, 0, 0, 0))
events.PATH = job["evdir"] + "/events.bin"
events.SENT_PATH = job["evdir"] + "/events.sent"
z = telemetry.shared_secret(u(job["key"]), u(job["fleet"]))
ctr = nonce.Counter()
s = telemetry.Sealer(z, job["id"], ctr)
print("EPOCH", hexlify(ctr.epoch).decode())
if job.get("cert"):
    print("HELLO", hexlify(telemetry.hello(u(job["cert"]), ctr.epoch, ctr.previous)).decode())
for r in job.get("readings", []):
    print("T", hexlify(s.seal_reading(job["topic"], r)).decode())
for e in job.get("ev", []):
    events.record(*e)
for slot, data in job.get("tamper", []):
    f = open(events.PATH, "r+b")
    f.seek(slot * 128)
    f.write(u(data))
    f.close()
if job.get("send"):
    telemetry.send_events(s, lambda m: print("E", hexlify(m).decode()), job["ev_topic"])
"""


@pytest.fixture
def fleet(tmp_path):
    """A fleet data key, a CA, and a device key pair with its certificate."""
    fkey = fleetkeys.ensure(tmp_path / "fleet")
    ca = pki.init_ca(tmp_path / "ca", dev=True)
    dkey = pki.new_key()
    cert = pki.issue_client_cert(ca, dkey.public_key(), DEV)
    devdir = tmp_path / "dev"
    sim_device.create(str(devdir))
    return {"fkey": fkey, "ca": ca, "dkey": dkey, "cert": cert, "devdir": devdir, "tmp": tmp_path}


def device_seal(fleet, **job):
    sec1 = fleet["dkey"].private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())
    evdir = fleet["tmp"] / "events"
    evdir.mkdir(exist_ok=True)
    job.update(key=sec1.hex(), fleet=fleetkeys.public_point(fleet["fkey"]).hex(), id=DEV, topic=TOPIC,
               ev_topic=EV_TOPIC, evdir=str(evdir))
    path = fleet["tmp"] / "job.json"
    path.write_text(json.dumps(job))
    r = mphelp.run_mp(SEAL, devdir=fleet["devdir"], heap_kib=HEAP, args=(str(path),))
    assert r.returncode == 0, r.stdout + r.stderr
    out = {"T": [], "E": []}
    for line in r.stdout.splitlines():
        tag, _, val = line.partition(" ")
        if tag in ("EPOCH", "HELLO"):
            out[tag.lower()] = bytes.fromhex(val)
        elif tag in out:
            out[tag].append(bytes.fromhex(val))
    return out


def ring(fleet):
    data = (fleet["tmp"] / "events" / "events.bin").read_bytes()
    return [data[i:i + 128] for i in range(0, len(data), 128)]


def rehash(rec):
    """What someone who knows the format can do: fix a record's own hash."""
    rec = bytearray(rec)
    rec[112:] = hashlib.sha256(bytes(rec[96:112]) + bytes(rec[:96])).digest()[:16]
    return bytes(rec)


def up_keys(fleet, epoch):
    z = fleetkeys.shared_secret(fleet["fkey"], fleet["dkey"].public_key())
    return fleetkeys.derive(z, epoch, fleetkeys.UP, DEV)


def test_device_readings_open_with_pycose(fleet):
    readings = [{"seq": i, "temp_c": 21.5 + i, "battery_mv": 3700 - i, "ssid": "home", "mac": 42,
                 "rssi_dbm": "weak"} for i in range(3)]
    out = device_seal(fleet, readings=readings)
    key, base_iv = up_keys(fleet, out["epoch"])
    if base_iv[0] == 0:
        # pycose 1.1 drops leading zero bytes when it XORs the Partial IV
        # into the Base IV (its bug: tests/host/test_cose.py); this device's
        # Base IV (derived from fresh random keys) happens to start with one.
        pytest.skip("Base IV starts with 0x00: pycose cannot open it (1 run in 256)")
    for i, msg in enumerate(out["T"]):
        m = Enc0Message.decode(msg)
        k = SymmetricKey(k=key)
        k.base_iv = base_iv
        m.key = k
        m.external_aad = TOPIC.encode()
        body = cbor2.loads(m.decrypt())
        assert m.phdr == {Algorithm: AESCCM1664128}
        assert m.uhdr[PartialIV] == bytes([i])
        assert body["id"] == DEV and body["seq"] == i and body["temp_c"] == 21.5 + i
        assert body["battery_mv"] == 3700 - i and body["ts"] > 1735689600
        # Data minimisation: only allowlisted numeric fields left the device.
        assert set(body) == {"id", "ts", "seq", "temp_c", "battery_mv"}
        # Deterministic map order (RFC 8949 4.2.1: text keys shorter first).
        assert list(body) == sorted(body, key=lambda k: (len(k), k))
        # The topic is bound: pycose refuses it under another one.
        m2 = Enc0Message.decode(msg)
        m2.key = k
        m2.external_aad = b"ironclad/dev-0043/telemetry"
        with pytest.raises(Exception):
            m2.decrypt()


def test_console_opens_device_messages_and_flags_tampering(fleet, tmp_path):
    out = device_seal(fleet, readings=[{"seq": 1, "temp_c": 20.0}, {"seq": 2, "temp_c": 20.5}])
    con = Console("127.0.0.1", 1, fleet["ca"].cert_path, None, None, fleet["fkey"], PREFIX,
                  str(tmp_path / "console.json"))
    # Unknown device: nothing opens before its hello.
    assert con.handle(TOPIC, out["T"][0])[0].alarm
    hello = cbor2.dumps({"v": 1, "cert": pki.cert_der(fleet["cert"]), "epoch": out["epoch"]})
    m = con.handle("%s/%s/state/keys" % (PREFIX, DEV), hello)[0]
    assert not m.alarm and m.kind == "state"
    # On the state topic itself too (next to "online"/"offline").
    assert "certificate ok" in con.handle("%s/%s/state" % (PREFIX, DEV), hello)[0].text
    assert con.handle("%s/%s/state" % (PREFIX, DEV), b"offline")[0].text == "state: offline"
    got = con.handle(TOPIC, out["T"][0])[0]
    assert got.kind == "telemetry" and got.body["seq"] == 1 and got.counter == 0
    assert "temp_c=20.0" in str(got)
    # A QoS 1 redelivery is a duplicate; the same message under another
    # device's topic or with a flipped bit is an alarm.
    dup = con.handle(TOPIC, out["T"][0])[0]
    assert dup.kind == "telemetry" and "duplicate" in dup.text
    assert con.handle("%s/dev-0043/telemetry" % PREFIX, out["T"][1])[0].alarm
    bad = bytearray(out["T"][1])
    bad[-1] ^= 1
    assert "does not open" in con.handle(TOPIC, bytes(bad))[0].text
    assert con.handle(TOPIC, out["T"][1])[0].body["seq"] == 2
    # Replaying an older message after a newer one (one the console did not
    # see) is flagged too.
    con2 = Console("127.0.0.1", 1, fleet["ca"].cert_path, None, None, fleet["fkey"], PREFIX)
    con2.handle("%s/%s/state/keys" % (PREFIX, DEV), hello)
    con2.handle(TOPIC, out["T"][1])
    assert "replayed" in con2.handle(TOPIC, out["T"][0])[0].text


def test_readings_spooled_before_reboots_open_after_the_hello(fleet):
    # The key epoch is new every boot (ironclad.nonce). Readings spooled in
    # one boot are delivered in a later one, after that boot's hello: it
    # names the last boots' epochs too, so they still open.
    cert = pki.cert_der(fleet["cert"]).hex()
    first = device_seal(fleet, readings=[{"seq": 1, "temp_c": 20}])
    device_seal(fleet)
    last = device_seal(fleet, readings=[{"seq": 3, "temp_c": 20}], cert=cert)
    assert len({first["epoch"], last["epoch"]}) == 2
    con = Console("127.0.0.1", 1, fleet["ca"].cert_path, None, None, fleet["fkey"], PREFIX)
    m = con.handle("%s/%s/state/keys" % (PREFIX, DEV), last["hello"])[0]
    assert not m.alarm, m.text
    got = [con.handle(TOPIC, msg)[0] for msg in first["T"] + last["T"]]
    assert [(m.alarm, m.body and m.body["seq"]) for m in got] == [(False, 1), (False, 3)], [m.text for m in got]
    assert con.devices[DEV]["epochs"][0] == last["epoch"]  # the current epoch is the newest


def test_hello_needs_a_fleet_certificate_for_that_device(fleet, tmp_path):
    con = Console("127.0.0.1", 1, fleet["ca"].cert_path, None, None, fleet["fkey"], PREFIX)
    other_ca = pki.init_ca(tmp_path / "other", dev=True)
    foreign = pki.issue_client_cert(other_ca, fleet["dkey"].public_key(), DEV)
    wrong_cn = pki.issue_client_cert(fleet["ca"], fleet["dkey"].public_key(), "dev-0099")
    for cert, why in ((foreign, "fleet CA"), (wrong_cn, "not 'dev-0042'")):
        m = con.handle("%s/%s/state/keys" % (PREFIX, DEV),
                       cbor2.dumps({"v": 1, "cert": pki.cert_der(cert), "epoch": bytes(8)}))[0]
        assert m.alarm and why in m.text, m.text
    assert DEV not in con.devices


def _console(fleet, state=None):
    return Console("127.0.0.1", 1, fleet["ca"].cert_path, None, None, fleet["fkey"], PREFIX, state)


def _booted(con, fleet, out):
    # Each device run is a boot with a new key epoch (ironclad.nonce), which
    # the agent's hello at connect tells the console.
    con.add_device(DEV, pki.cert_der(fleet["cert"]), epoch=out["epoch"])
    return out


def _feed(con, msgs):
    return [m for msg in msgs for m in con.handle(EV_TOPIC, msg)]


def test_console_verifies_the_event_chain(fleet, tmp_path):
    state = str(tmp_path / "console.json")
    out = device_seal(fleet, ev=[["boot", "r%d" % i, "info"] for i in range(5)], send=True)
    con = _console(fleet, state)
    con.add_device(DEV, pki.cert_der(fleet["cert"]), epoch=out["epoch"])
    seen = _feed(con, out["E"])
    assert [m.body["seq"] for m in seen] == [1, 2, 3, 4, 5]
    assert not any(m.alarm for m in seen) and "boot/r0" in str(seen[0])
    # Resent (the device's sent mark lagged): nothing new, no alarm.
    (fleet["tmp"] / "events" / "events.sent").write_text("3")
    assert _feed(con, _booted(con, fleet, device_seal(fleet, send=True))["E"]) == []

    # The device goes on: 6..9 are recorded, then someone with the flash
    # blanks #7 before it is sent. The console, restarted in between,
    # remembers where the chain was.
    more = device_seal(fleet, ev=[["cmd", "forged", "rejected"], ["cmd", "old", "rejected"],
                                  ["boot", "bad_signature", "rejected"], ["wipe", "requested", "ok"]],
                       tamper=[(6, "00" * 128)], send=True)
    con = _console(fleet, state)
    seen = _feed(con, _booted(con, fleet, more)["E"])
    assert any(m.alarm and "#7..#7 missing" in m.text for m in seen), [m.text for m in seen]
    assert [m.body["seq"] for m in seen if not m.alarm] == [6, 8, 9]


def test_console_detects_altered_and_rewritten_records(fleet, tmp_path):
    con = _console(fleet, str(tmp_path / "console.json"))
    out = device_seal(fleet, ev=[["boot", "r%d" % i, "info"] for i in range(4)], send=True)
    con.add_device(DEV, pki.cert_der(fleet["cert"]), epoch=out["epoch"])
    assert not any(m.alarm for m in _feed(con, out["E"]))
    # #5, #6, #7 recorded; #6 then edited and re-hashed: it still links to #5,
    # but #7 no longer links to it.
    device_seal(fleet, ev=[["cmd", "forged", "rejected"], ["cmd", "old", "rejected"], ["boot", "ok", "ok"]])
    r6 = bytearray(ring(fleet)[5])
    r6[19 + 3:19 + 9] = b"benign"  # "cmdforged..." -> "cmdbenign..."
    seen = _feed(con, _booted(con, fleet, device_seal(fleet, tamper=[(5, rehash(r6).hex())], send=True))["E"])
    assert [m.alarm for m in seen] == [False, False, True], [m.text for m in seen]
    assert "chain broken before #7" in seen[2].text
    # History rewritten: #1 replaced by a record that hashes fine, and the
    # whole log resent. The console saw the real #1.
    r1 = bytearray(ring(fleet)[0])
    r1[19 + 4:19 + 6] = b"zz"
    (fleet["tmp"] / "events" / "events.sent").write_text("0")
    seen = _feed(con, _booted(con, fleet, device_seal(fleet, tamper=[(0, rehash(r1).hex())], send=True))["E"])
    assert len(seen) == 1 and seen[0].alarm and "#1 rewritten" in seen[0].text, [m.text for m in seen]
    assert decode_event(rehash(r1)) is not None
    # A record altered without re-hashing never leaves the device (its ring
    # scan drops it): the console sees the gap.
    device_seal(fleet, ev=[["boot", "x", "info"], ["boot", "y", "info"]])
    r8 = bytearray(ring(fleet)[7])
    r8[30] ^= 1
    seen = _feed(con, _booted(con, fleet, device_seal(fleet, tamper=[(7, bytes(r8).hex())], send=True))["E"])
    assert [m.alarm for m in seen] == [True, False] and "#8..#8 missing" in seen[0].text
