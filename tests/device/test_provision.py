# The agent's gate: require() on a board that is not (or no longer) properly
# provisioned raises NotProvisioned and records a security event; a complete
# set of entries gives the Identity. Device id rules; certificate parsing
# refuses what is not a certificate.
import json
import os

import esp32
from ironclad import events, identity, provision
from ironclad.keystore import KeyStore, NAMESPACE

# The library is compiled from source into the heap here (frozen on a board):
# compiling p256.py needs large blocks, which the grown stand-ins (binary
# partition table, RTC) leave too few of below 160 KiB. Provisioning on the
# precompiled firmware runs within the app's 64 KiB heap (test_run.py). The
# `time` stand-in (2000 epoch, 2**30 tick wrap) takes 3 KiB more.
# Each step also turns the (simulated) radio on first (ironclad.rng).
HEAP_KIB = 240  # the stand-ins held to the port profile and the 2000-epoch time: 192 KiB left too few large blocks

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"

PUB = b"\x04" + b"\x11" * 64
BROKER = {"host": "10.0.0.5", "port": 8883, "hostname": "mqtt.example", "prefix": "fleet"}


def _fill(ks):
    ks.put("device_key", b"k" * 121)
    ks.put("device_id", b"ic-00aa00bb00cc")
    ks.put("cert", b"c" * 400)
    ks.put("ca", b"a" * 400)
    ks.put("broker", json.dumps(BROKER).encode())
    ks.put("fleet_data_pub", PUB)
    ks.put("provisioned", b"fp")


def _refused(ks=None):
    try:
        provision.require(ks)
    except identity.NotProvisioned as e:
        return str(e)
    raise AssertionError("require() accepted the board")


def test_unprovisioned_board_is_refused_with_an_event():
    msg = _refused()
    assert "not provisioned" in msg and "ictl provision" in msg
    ev = events.since(0)
    assert [(e["kind"], e["reason"], e["outcome"]) for e in ev] == [("provisioning", "not_provisioned", "rejected")]


def test_complete_credentials_give_the_identity():
    ks = KeyStore()
    _fill(ks)
    me = provision.require(ks)
    assert me.device_id == "ic-00aa00bb00cc" and me.host == "10.0.0.5" and me.port == 8883
    assert me.hostname == "mqtt.example" and me.topic("telemetry") == "fleet/ic-00aa00bb00cc/telemetry"
    assert me.fleet_data_pub == PUB
    assert repr(me) == "<Identity ic-00aa00bb00cc broker 10.0.0.5:8883>"
    assert "k" * 20 not in repr(me.__dict__)  # the key is not held
    assert events.since(0) == []


def test_incomplete_or_damaged_credentials_are_refused():
    ks = KeyStore()
    _fill(ks)
    ks.delete("cert")
    assert "no cert" in _refused(ks)
    ks.put("cert", b"c" * 400)
    ks.put("broker", b'{"host": "h"}')
    assert "broker settings" in _refused(ks)
    ks.put("broker", json.dumps(BROKER).encode())
    n = esp32.NVS(NAMESPACE)
    rec = bytearray(3000)
    k = n.get_blob("device_id", rec)
    rec[20] ^= 1
    n.set_blob("device_id", rec[:k])
    n.commit()
    msg = _refused(ks)
    assert "'device_id'" in msg and "authentication" in msg
    kinds = [(e["kind"], e["reason"]) for e in events.since(0)]
    assert ("keystore", "tampered") in kinds and ("provisioning", "not_provisioned") in kinds


def test_device_id_rules():
    for good in ("ic-240ac4000001", "a", "Z9_.-x", "x" * 64):
        assert provision.check_device_id(good) == good
    for bad in ("", "-a", ".a", "a/b", "a b", "a+b", "#", "x" * 65, "fleet-console", "é", None, 5):
        try:
            provision.check_device_id(bad)
        except provision.ProvisionError:
            continue
        raise AssertionError("accepted %r" % (bad,))


def test_parse_cert_refuses_non_certificates():
    for bad in (b"", b"\x30\x00", b"\x30\x03\x02\x01\x00", b"\x30\x80\x00\x00", b"\x31\x02\x30\x00", b"\x30\x02\x30\x00" + b"x"):
        try:
            provision.parse_cert(bad)
        except ValueError:
            continue
        raise AssertionError("parsed %r" % (bad,))


def test_start_refuses_a_provisioned_board_and_leaves_it():
    ks = KeyStore()
    _fill(ks)
    provision.start("ic-other")
    assert KeyStore().get("device_id") == b"ic-00aa00bb00cc"
    assert KeyStore().get("device_key") == b"k" * 121
