"""Keystore across devices and power cuts: a record copied from another
device, or a whole flash image cloned onto another chip, does not open; a
power cut before (or a tear of) any flash operation of keystore writes leaves
every entry with its old value or its new one. `make soak` runs the same
sweeps at full size (ictl/soak_keystore.py)."""
import json
import os
import shutil

import pytest

from mphelp import run_mp
from ictl import device as sim_device
from ictl import faults, soak_keystore

pytestmark = pytest.mark.timeout(300)

PUT = """
from ironclad.keystore import KeyStore
ks = KeyStore()
ks.put("device_key", b"key of " + NAME)
ks.put("cert", b"cert of " + NAME)
"""

READ = """
import binascii, esp32
from ironclad.keystore import KeyStore, KeyStoreError, NAMESPACE
b = bytearray(3000)
n = esp32.NVS(NAMESPACE).get_blob("cert", b)
print("BLOB", binascii.hexlify(b[:n]).decode())
ks = KeyStore()
for name in ("device_key", "cert"):
    try:
        print("GET", name, ks.get(name))
    except KeyStoreError as e:
        print("ERR", name, e)
"""

WRITE = """
import binascii, esp32
from ironclad.keystore import NAMESPACE
n = esp32.NVS(NAMESPACE)
n.set_blob("cert", binascii.unhexlify(BLOB))
n.commit()
"""


def dev(tmp_path, name):
    d = str(tmp_path / name)
    sim_device.create(d)
    r = run_mp(PUT.replace("NAME", repr(name.encode())), d, heap_kib=128)
    assert r.returncode == 0, r.stderr
    return d


def read(d):
    r = run_mp(READ, d, heap_kib=128)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_record_copied_from_another_device_is_rejected(tmp_path):
    a, b = dev(tmp_path, "a"), dev(tmp_path, "b")
    blob = next(line.split()[1] for line in read(a).splitlines() if line.startswith("BLOB"))
    r = run_mp(WRITE.replace("BLOB", repr(blob)), b, heap_kib=128)
    assert r.returncode == 0, r.stderr
    out = read(b)
    assert "GET device_key b'key of b'" in out  # b's own entry is untouched
    (err,) = [line for line in out.splitlines() if line.startswith("ERR")]
    assert "'cert'" in err and "another device" in err and "cert of" not in err


def test_flash_cloned_to_another_chip_opens_nothing(tmp_path):
    a, b = dev(tmp_path, "a"), dev(tmp_path, "b")
    # b gets a's whole flash and even a's NVS encryption key (the attacker's
    # best case); only the chip's unique id differs.
    shutil.copy(os.path.join(a, "flash.bin"), os.path.join(b, "flash.bin"))
    ca, cb = (json.load(open(os.path.join(x, "device.json"))) for x in (a, b))
    cb["efuse"] = ca["efuse"]
    json.dump(cb, open(os.path.join(b, "device.json"), "w"))
    out = read(b)
    errs = [line for line in out.splitlines() if line.startswith("ERR")]
    assert len(errs) == 2 and all("another device" in e for e in errs), out
    assert "key of" not in out


def test_power_cut_sweep_over_keystore_writes():
    # 6 rounds: the NVS log compacts once during the run.
    points, failures = soak_keystore.sweep(6)
    assert points >= 100
    assert not failures, failures[:3]


def test_power_cut_during_wipe():
    # Every 9th operation of a wipe() (~130 operations, most of them the NVS
    # churn); `make soak` cuts at every one.
    points, failures = soak_keystore.wipe_sweep(points=range(1, 200, 9))
    assert points >= 28
    assert not failures, failures[:3]


def test_sweep_catches_a_put_that_is_not_atomic():
    # The same check against a put done as delete-then-put: the cut between
    # the two leaves the entry with neither value, and the sweep must say so.
    run = soak_keystore.RUN.replace("ks.put(name, val(name, i))",
                                    "ks.delete(name)\n        ks.put(name, val(name, i))")
    assert run != soak_keystore.RUN
    points, failures = faults.sweep(None, run.replace("ROUNDS_VALUE", "2"),
                                    soak_keystore.CHECK.replace("ROUNDS_VALUE", "2"), tear_bytes=(),
                                    heap_kib=112)  # the extra delete's garbage beside ironclad.rng (issue 13)
    assert failures and "not a state of the run" in failures[0][1]
