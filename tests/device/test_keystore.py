# Keystore on the device: round trip and persistence, names and index, tamper
# and device binding, secrets kept out of repr and errors, and wipe() really
# overwriting the storage key and every record in the NVS partition.
import gc
import os

import esp32
import espsim
from ironclad import events
from ironclad import keystore
from ironclad.keystore import KeyStore, KeyStoreError

# The library and this file are compiled from source into the heap here (and
# the esp32 stand-in alone takes 18 KiB); on a board they are frozen and NVS is
# C. test_heap_per_operation measures what the keystore itself allocates.
# 160: the stand-ins hold to the port profile (espsim.honour), and the first
# put also loads ironclad.rng and the network stand-in (C on a board).
HEAP_KIB = 192  # passed at 144 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"

SECRET = b"\x8a\x13 this is a private key, really \x00\xff" * 3


def _reboot():
    # A new boot: the NVS stand-in re-reads the flash, nothing cached survives.
    esp32._store = None
    events._reset_cache()
    return KeyStore()


def _raises(fn, *args):
    try:
        fn(*args)
    except KeyStoreError as e:
        return str(e)
    raise AssertionError("no KeyStoreError")


def test_put_get_delete_names_persist():
    ks = KeyStore()
    assert ks.get("cert") is None and ks.names() == []
    ks.put("device_key", SECRET)
    ks.put("cert", b"C" * 700)
    ks.put("broker", bytearray(b'{"host": "h"}'))
    ks.put("cert", b"D" * 900)  # overwrite
    ks.put("empty", b"")
    assert ks.names() == ["broker", "cert", "device_key", "empty"]
    ks = _reboot()
    assert ks.get("device_key") == SECRET
    assert ks.get("cert") == b"D" * 900
    assert ks.get("broker") == b'{"host": "h"}'
    assert ks.get("empty") == b""
    assert ks.delete("broker") is True and ks.delete("broker") is False
    assert ks.get("broker") is None
    ks = _reboot()
    assert ks.names() == ["cert", "device_key", "empty"]
    big = bytes(range(256)) * 8
    ks.put("ca", big)  # MAX_VALUE exactly
    assert _reboot().get("ca") == big


def test_bad_names_and_values_change_nothing():
    ks = KeyStore()
    ks.put("cert", b"keep")
    for bad in ("", "Cert", "1abc", "a" * 16, "a-b", "_index", "sk x", None):
        assert "name" in _raises(ks.put, bad, b"x")
    assert "longer than" in _raises(ks.put, "cert", b"x" * (keystore.MAX_VALUE + 1))
    assert "must be bytes" in _raises(ks.put, "cert", "a str")
    assert _reboot().get("cert") == b"keep"
    assert KeyStore().names() == ["cert"]


def test_records_are_sealed_not_plain():
    ks = KeyStore()
    ks.put("device_key", SECRET)
    raw = bytearray(keystore.MAX_VALUE + 64)
    n = esp32.NVS(keystore.NAMESPACE).get_blob("device_key", raw)
    assert n == len(SECRET) + 30
    assert SECRET[:16] not in bytes(raw[:n])
    # a fresh nonce each time: the same value never seals to the same bytes
    ks.put("device_key", SECRET)
    raw2 = bytearray(keystore.MAX_VALUE + 64)
    esp32.NVS(keystore.NAMESPACE).get_blob("device_key", raw2)
    assert raw2[:n] != raw[:n]


def _blob(ns, name):
    b = bytearray(keystore.MAX_VALUE + 64)
    n = esp32.NVS(ns).get_blob(name, b)
    return bytes(b[:n])


def _set_blob(ns, name, data):
    n = esp32.NVS(ns)
    n.set_blob(name, data)
    n.commit()


def test_tampered_record_names_entry_and_loses_nothing_else():
    ks = KeyStore()
    ks.put("device_key", SECRET)
    ks.put("cert", b"certificate")
    for pos in (0, 5, 20, -1):  # version, nonce, ciphertext, tag
        rec = bytearray(_blob(keystore.NAMESPACE, "device_key"))
        good = bytes(rec)
        rec[pos] ^= 0x01
        _set_blob(keystore.NAMESPACE, "device_key", rec)
        ks = _reboot()
        msg = _raises(ks.get, "device_key")
        assert "'device_key'" in msg and "authentication" in msg
        assert "private" not in msg and "\\x8a" not in msg
        assert ks.get("cert") == b"certificate"
        assert ks.names() == ["cert", "device_key"]
        _set_blob(keystore.NAMESPACE, "device_key", good)
    assert _reboot().get("device_key") == SECRET
    # truncated and oversized records
    _set_blob(keystore.NAMESPACE, "cert", b"\x01short")
    assert "'cert'" in _raises(_reboot().get, "cert")
    _set_blob(keystore.NAMESPACE, "cert", bytes(keystore.MAX_VALUE + 31))
    assert "'cert'" in _raises(_reboot().get, "cert")
    assert _reboot().get("device_key") == SECRET
    ev = [e for e in events.since(0) if e["kind"] == "keystore"]
    assert len(ev) >= 6 and ev[0]["reason"] == "tampered" and ev[0]["detail"] == "device_key"


def test_records_do_not_move_between_names():
    ks = KeyStore()
    ks.put("ca", b"the fleet CA")
    ks.put("cert", b"the device cert")
    _set_blob(keystore.NAMESPACE, "ca", _blob(keystore.NAMESPACE, "cert"))
    assert "'ca'" in _raises(_reboot().get, "ca")
    assert KeyStore().get("cert") == b"the device cert"


def test_bound_to_this_chip():
    ks = KeyStore()
    ks.put("device_key", SECRET)
    # The whole NVS (storage key included) cloned onto a chip with another
    # unique id: nothing opens.
    other = KeyStore(uid=b"\x24\x0a\xc4\x00\x00\x01")
    assert "'device_key'" in _raises(other.get, "device_key")
    # A record from another keystore (its own storage key), copied in.
    a = KeyStore(nvs=esp32.NVS("a_ks"), key_nvs=esp32.NVS("a_sk"))
    a.put("cert", b"another device's certificate")
    ks.put("cert", b"mine")
    _set_blob(keystore.NAMESPACE, "cert", _blob("a_ks", "cert"))
    assert "'cert'" in _raises(_reboot().get, "cert")
    assert KeyStore().get("device_key") == SECRET


def test_secrets_stay_out_of_repr_and_errors():
    ks = KeyStore()
    ks.put("device_key", SECRET)
    assert ks.get("device_key") == SECRET
    texts = [repr(ks), str(ks)]
    for bad in ((ks.put, "device_key", SECRET * 30), (ks.put, "Device_key", SECRET)):
        texts.append(_raises(*bad))
    for t in texts:
        assert "private" not in t and "\\x8a" not in t, t


def test_index_never_hides_a_record():
    # A cut after the index got a new name but before its record landed (the
    # write order put() uses): names() lists only what is really there.
    ks = KeyStore()
    ks.put("cert", b"c")
    ks._set_index(["cert", "ghost"])
    ks = _reboot()
    assert ks.names() == ["cert"] and ks.get("ghost") is None
    ks.put("ghost", b"now real")
    assert _reboot().names() == ["cert", "ghost"]


def _nvs_holds(needles):
    """Which of needles occur anywhere in the raw NVS partition (read 1 KiB at
    a time, overlapping so nothing straddling a boundary is missed; a small
    buffer, made after a collection: the heap here also holds the compiled
    library)."""
    p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="nvs")[0]
    over = max(len(n) for n in needles)
    gc.collect()
    buf = bytearray(1024)
    tail = b""
    found = set()
    for off in range(0, p.info()[3], len(buf)):
        p.readblocks(off // 4096, buf, off % 4096)
        seam = tail + bytes(buf[:over])
        for i, n in enumerate(needles):
            if n in buf or n in seam:
                found.add(i)
        tail = bytes(buf[-over:])
    return found


def test_wipe_overwrites_storage_key_and_records():
    # NVS encryption off for this test, so the raw partition shows what the
    # keystore itself leaves behind (with it on, nothing is in the clear anyway).
    espsim.flash().efuse = {}
    ks = KeyStore()
    ks.put("device_key", SECRET)
    ks.put("cert", b"certificate bytes")
    ks.put("extra", b"x" * 100)
    ks.put("provisioned", b"yes")
    ks.put("device_key", SECRET + b"2")  # an older version stays in the log too
    sk = _blob(keystore.KEY_NAMESPACE, "sk")
    sealed = [_blob(keystore.NAMESPACE, n) for n in ("device_key", "cert", "extra", "provisioned")]
    # the key, and each record's nonce and first ciphertext bytes
    needles = [sk] + [s[1:14] for s in sealed] + [s[14:30] for s in sealed]
    assert len(sk) == 32 and _nvs_holds(needles) == set(range(len(needles)))
    other = esp32.NVS("other")
    other.set_i32("keep", 7)
    other.commit()
    assert ks.wipe() == 4
    assert _nvs_holds(needles) == set()
    ks = _reboot()
    assert ks.names() == [] and ks.get("device_key") is None and ks.get("provisioned") is None
    assert esp32.NVS("other").get_i32("keep") == 7  # other NVS users keep their data
    ks.put("device_key", b"new")
    assert _blob(keystore.KEY_NAMESPACE, "sk") != sk
    assert _reboot().get("device_key") == b"new"


def test_lost_storage_key_is_an_error_then_a_clean_start():
    ks = KeyStore()
    ks.put("cert", b"c")
    n = esp32.NVS(keystore.KEY_NAMESPACE)
    n.erase_key("sk")
    n.commit()
    ks = _reboot()
    assert "storage key is gone" in _raises(ks.get, "cert")
    ks.put("device_id", b"d")  # a new key; the unreadable leftovers are cleared
    ks = _reboot()
    assert ks.names() == ["device_id"] and ks.get("cert") is None


def test_heap_per_operation():
    # What the keystore allocates around NVS (whose stand-in allocates on the
    # heap here, unlike ESP-IDF's C implementation on a board).
    ks = KeyStore()
    cert = bytes(600)
    ks.put("cert", cert)
    ks.get("cert")  # CCM work buffers grow to the record size once
    gc.collect()
    gc.disable()
    try:
        a = gc.mem_alloc()
        ks.get("cert")
        got = gc.mem_alloc() - a
        a = gc.mem_alloc()
        ks._seal("cert", cert)
        ks._index()
        put = gc.mem_alloc() - a
    finally:
        gc.enable()
    print("REPORT: keystore heap per 600-byte record: get %d B, put %d B (without the NVS write)" % (got, put))
    assert got < 2048 and put < 2048
