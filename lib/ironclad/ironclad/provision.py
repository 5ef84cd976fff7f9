# Device side of USB provisioning, and the gate the agent passes before it
# starts any network service.
#
# `ictl provision` drives the steps below through `mpremote exec`; each prints
# one line "ICPROV {json}" for the host to read. Nothing secret crosses the
# USB link: the key pair is made here and only the CSR leaves.
#   info()                      who am I: firmware, unique id, provisioned?
#   start(device_id)            clean any half-done attempt, make the key pair,
#                               keep it in the keystore, print the CSR
#   check(cert, ca, fleet_pub)  the certificate is for this key and id and
#                               signed by the CA; the fleet key is a P-256 point
#   wifi(ssid, sealed)          the Wi-Fi credentials (ironclad.net): the passphrase
#                               arrives sealed to the board's own key (below), is
#                               checked, kept sealed in the keystore, never printed
#   finish(cert, ca, broker, fleet_pub, now)   the cheap checks again, store
#                               it all, set the clock and its floor from the
#                               host's time (ironclad.clock), then mark the
#                               board provisioned (last write)
#   wipe()                      erase every credential (keystore wipe)
#
# The agent's gate is identity.require() (also importable from here; the
# identity module alone is the lighter import):
#   me = identity.require()     # Identity, or NotProvisioned + security event
import binascii
import gc
import hashlib
import json
from micropython import const

from ironclad.keystore import KeyStore, KeyStoreError

PROTOCOL = 1
_OUT = "ICPROV "
_OID_CN = b"\x06\x03\x55\x04\x03"  # DER of the commonName OID 2.5.4.3
_MAX_ID = const(64)


class ProvisionError(Exception):
    """A provisioning step refused its input; the message says why."""


def require(ks=None):
    """identity.require(): the agent's gate."""
    from ironclad import identity

    return identity.require(ks)


def _out(obj):
    print(_OUT + json.dumps(obj))


def _step(fn, *args):
    # Refusals become one JSON line for the host; anything else is a bug and
    # keeps its traceback. The radio first: keys, the storage key and every
    # sealing nonce come from the hardware RNG (ironclad.rng).
    from ironclad import rng

    try:
        rng.radio_on()
        _out(fn(*args))
    except (ProvisionError, KeyStoreError, ValueError) as e:
        _out({"error": str(e)})


def _hex(b):
    return binascii.hexlify(b).decode()


def _fingerprint(cert):
    return _hex(hashlib.sha256(cert).digest())


def check_device_id(device_id):
    """The rule the host applies too: 1-64 of A-Z a-z 0-9 _ . -, starting with
    a letter or digit (it becomes a topic level and the certificate CN), and
    not "fleet-..." (operator identities)."""
    ok = isinstance(device_id, str) and 0 < len(device_id) <= _MAX_ID and not device_id.startswith("fleet-")
    if ok:
        for i, c in enumerate(device_id):
            if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or (i and c in "_.-")):
                ok = False
                break
    if not ok:
        raise ProvisionError("device id %r is not valid" % (device_id,))
    return device_id


def _sec1(key):
    # (d, pub) from the SEC1 ECPrivateKey this module stored.
    from ironclad import der

    a, b = der.expect(key, 0, len(key), 0x30)
    _, pos = der.read_uint(key, a, b, 1)
    da, db = der.expect(key, pos, b, 0x04)
    return bytes(key[da:db]), bytes(key[-65:])


# --- steps --------------------------------------------------------------------


def _info():
    import sys
    import machine
    import ironclad

    ks = KeyStore()
    impl = sys.implementation
    out = {"protocol": PROTOCOL, "ironclad": ironclad.__version__, "micropython": "%d.%d.%d" % impl.version[:3],
           "machine": getattr(impl, "_machine", sys.platform), "uid": _hex(machine.unique_id()), "provisioned": False,
           "device_id": None, "fingerprint": None, "partial": False, "app": None}
    try:
        from ironclad import bootstate

        b = bootstate.booted()  # set by boot.py; None in recovery mode
        if b:
            out["app"] = {"slot": b["slot"], "version": b["version"]}
    except ImportError:
        pass
    try:
        out["partial"] = bool(ks.names())
        if ks.get("provisioned") is not None:
            out["provisioned"] = True
            d = ks.get("device_id")
            out["device_id"] = d.decode() if d else None
            c = ks.get("cert")
            out["fingerprint"] = _fingerprint(c) if c else None
            w = ks.get("wifi")
            out["wifi"] = json.loads(w)["ssid"] if w else None  # the SSID only
    except KeyStoreError as e:
        # A damaged store counts as provisioned: only a deliberate
        # --reprovision (which wipes) may replace it.
        out["provisioned"] = True
        out["damaged"] = str(e)
    return out


def info():
    _step(_info)


def _start(device_id):
    from ironclad import csr, der, p256

    check_device_id(device_id)
    ks = KeyStore()
    if ks.get("provisioned") is not None:
        raise ProvisionError("board is already provisioned")
    if ks.names():
        ks.wipe()  # left over from an attempt that stopped half way
    d = p256.generate()
    pub = p256.public_key(d)
    ks.put("device_key", der.ec_private_key_der(d, pub))
    ks.put("device_id", device_id.encode())
    return {"csr": _hex(csr.build_csr(d, pub, device_id))}


def start(device_id):
    _step(_start, device_id)


def _elements(buf, start, stop):
    # The (tag, start, stop) of each element in buf[start:stop].
    from ironclad import der

    pos = start
    while pos < stop:
        t, a, b = der.read(buf, pos, stop)
        yield t, pos, a, b
        pos = b


def parse_cert(cert):
    """(tbs, spki, [CNs], (r, s)) of a DER X.509 certificate signed with
    ecdsa-with-SHA256; ValueError for anything else."""
    from ironclad import der

    n = len(cert)
    start, stop = der.expect(cert, 0, n, 0x30)
    if stop != n:
        raise ValueError("certificate has trailing data")
    parts = list(_elements(cert, start, stop))
    if len(parts) != 3 or parts[0][0] != 0x30 or parts[2][0] != 0x03:
        raise ValueError("not an X.509 certificate")
    _, ts, ta, tb = parts[0]
    if bytes(cert[parts[1][1]:parts[1][3]]) != der.sequence(der.oid(der.OID_ECDSA_SHA256)):
        raise ValueError("certificate is not signed with ecdsa-with-SHA256")
    sa, sb = parts[2][2], parts[2][3]
    if sb - sa < 2 or cert[sa] != 0:
        raise ValueError("bad certificate signature")
    sig = der.ecdsa_sig_decode(cert[sa + 1:sb])
    fields = list(_elements(cert, ta, tb))
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    # serial, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    if len(fields) < 6 or fields[4][0] != 0x30 or fields[5][0] != 0x30:
        raise ValueError("not an X.509 certificate")
    cns = []
    for t, _, a, b in _elements(cert, fields[4][2], fields[4][3]):  # RDNs
        for _, _, a2, b2 in _elements(cert, a, b):  # AttributeTypeAndValue
            tv = list(_elements(cert, a2, b2))
            if len(tv) == 2 and bytes(cert[tv[0][1]:tv[0][3]]) == _OID_CN:
                cns.append(bytes(cert[tv[1][2]:tv[1][3]]).decode())
    spki = bytes(cert[fields[5][1]:fields[5][3]])
    return bytes(cert[ts:tb]), spki, cns, sig


def _pending(ks):
    """(SEC1 key, device id) of a board between the start step and the
    commit point; ProvisionError otherwise."""
    if ks.get("provisioned") is not None:
        raise ProvisionError("board is already provisioned")
    key = ks.get("device_key")
    dev = ks.get("device_id")
    if key is None or dev is None:
        raise ProvisionError("no key pair on the board: run the start step first")
    return key, dev


def _mine(ks, cert):
    """The board's key pair and device id, after checking that cert is for
    them; raises ProvisionError otherwise."""
    from ironclad import der

    key, dev = _pending(ks)
    d, pub = _sec1(key)
    tbs, spki, cns, sig = parse_cert(cert)
    if spki != der.spki_p256_encode(pub):
        raise ProvisionError("certificate is for another key, not this board's")
    dev = dev.decode()
    if cns != [dev]:
        raise ProvisionError("certificate is for another device (CN %s), not %s" % (",".join(cns) or "-", dev))
    return d, dev, tbs, sig


def _check(cert_hex, ca_hex, fleet_pub_hex):
    # The checks that need P-256 arithmetic, in a step of their own: with
    # p256 loaded next to the NVS writes, a small board runs out of heap.
    from ironclad import der, p256

    d, dev, tbs, (r, s) = _mine(KeyStore(), binascii.unhexlify(cert_hex))
    h = hashlib.sha256(tbs).digest()
    ca = binascii.unhexlify(ca_hex)
    signed = False
    for _, start, _, stop in _elements(ca, 0, len(ca)):
        try:
            ca_pub = der.spki_p256_decode(parse_cert(ca[start:stop])[1])
        except ValueError:
            continue
        if p256.verify(ca_pub, h, r, s):
            signed = True
    if not signed:
        raise ProvisionError("certificate is not signed by the CA given with it")
    # ECDH validates the point (on P-256): the telemetry key agreement would
    # fail later with a bad one.
    try:
        p256.ecdh(d, binascii.unhexlify(fleet_pub_hex))
    except ValueError:
        raise ProvisionError("fleet data public key is not a P-256 point")
    return {"checked": True, "device_id": dev}


def check(cert_hex, ca_hex, fleet_pub_hex):
    _step(_check, cert_hex, ca_hex, fleet_pub_hex)


def _finish(cert_hex, ca_hex, broker_json, fleet_pub_hex, now=None, broker_ca_hex=None):
    # broker_ca_hex: the CA(s) that certify the broker when that is not the
    # fleet CA (a cloud broker: AWS IoT Core's Amazon root, say).
    from ironclad import clock, identity

    ks = KeyStore()
    anchor = binascii.unhexlify(broker_ca_hex or ca_hex)
    n = 0
    for _, start, _, stop in _elements(anchor, 0, len(anchor)):
        parse_cert(anchor[start:stop])  # ValueError: refused
        n += 1
    if not n:
        raise ProvisionError("broker CA holds no certificate")
    cert = binascii.unhexlify(cert_hex)
    _, dev, _, _ = _mine(ks, cert)  # cheap checks again: these are the bytes stored
    fleet_pub = binascii.unhexlify(fleet_pub_hex)
    if len(fleet_pub) != 65 or fleet_pub[0] != 4:
        raise ProvisionError("fleet data public key is not a P-256 point")
    b = json.loads(broker_json)
    if not (isinstance(b, dict) and isinstance(b.get("host"), str) and b["host"] and isinstance(b.get("port"), int)
            and 0 < b["port"] < 65536 and isinstance(b.get("hostname"), str) and b["hostname"]
            and isinstance(b.get("prefix"), str) and b["prefix"]):
        raise ProvisionError("broker settings need host, port (1-65535), hostname and prefix")
    keep = {"host": b["host"], "port": b["port"], "hostname": b["hostname"], "prefix": b["prefix"]}
    if b.get("ntp") is not None:
        identity.ntp_server(b["ntp"])  # ValueError: refused
        keep["ntp"] = b["ntp"]
    broker = json.dumps(keep)
    if now is not None:
        clock.provisioned(now)  # ValueError (the host's clock is wrong): refused before anything is stored
    gc.collect()
    ks.put("cert", cert)
    ks.put("ca", anchor)  # what the board trusts for the broker
    ks.put("broker", broker.encode())
    ks.put("fleet_data_pub", fleet_pub)
    fp = _fingerprint(cert)
    ks.put("provisioned", fp.encode())  # the commit point
    return {"provisioned": True, "device_id": dev, "fingerprint": fp}


def finish(cert_hex, ca_hex, broker_json, fleet_pub_hex, now=None, broker_ca_hex=None):
    _step(_finish, cert_hex, ca_hex, broker_json, fleet_pub_hex, now, broker_ca_hex)


WIFI_INFO = b"ironclad-wifi-v1"


def open_wifi(d, device_id, ssid, sealed):
    """The passphrase the host sealed to this board's key, so that it crosses
    the USB link (and the mpremote command line) only encrypted: sealed =
    ephemeral P-256 public key (65) || nonce (13) || AES-128-CCM ciphertext
    and 16-byte tag; key = HKDF-SHA256(ECDH(d, ephemeral), salt empty,
    info WIFI_INFO || device id, 16 bytes); AAD = the SSID."""
    from ironclad import ccm, kdf, p256

    if len(sealed) < 65 + 13 + 16:
        raise ProvisionError("Wi-Fi passphrase: sealed message too short")
    k = kdf.hkdf(p256.ecdh(d, sealed[:65]), b"", WIFI_INFO + device_id.encode(), 16)
    try:
        return ccm.decrypt(k, sealed[65:78], ssid.encode(), sealed[78:], 16).decode()
    except (ccm.AuthError, UnicodeError):
        raise ProvisionError("Wi-Fi passphrase: not sealed to this board's key")


def _wifi(ssid, sealed_hex):
    from ironclad import net

    ks = KeyStore()
    key, dev = _pending(ks)
    if not isinstance(ssid, str):
        raise ProvisionError("Wi-Fi SSID must be text")
    pw = open_wifi(_sec1(key)[0], dev.decode(), ssid, binascii.unhexlify(sealed_hex))
    net.check(ssid, pw)  # ValueError names the field, never the passphrase
    gc.collect()
    ks.put("wifi", net.encode(ssid, pw))
    return {"wifi": ssid}


def wifi(ssid, sealed_hex):
    _step(_wifi, ssid, sealed_hex)


def _wipe():
    return {"wiped": KeyStore().wipe()}


def wipe():
    _step(_wipe)

