"""The fleet data key: the P-256 key pair the fleet console opens device
payloads with (and seals commands under), the host-side half of
ironclad.telemetry's key derivation.

Devices get only the public half (the keystore's "fleet_data_pub", a 65-byte
uncompressed point) at provisioning. The private half stays on the console's
host in a PEM file written 0600 and refused when others can read it; it is
never printed or logged.

    key = fleetkeys.ensure(directory)             # fleet-data.key, made if missing
    fleetkeys.public_point(key)                   # -> 65 bytes for the device
    z = fleetkeys.shared_secret(key, device_pub)  # ECDH, as the device computes it
    k, base_iv = fleetkeys.derive(z, epoch, fleetkeys.UP, "dev-0001")
"""
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ictl import ToolError, pki

KEY_FILE = "fleet-data.key"
UP = b"device-to-fleet"    # what devices seal: telemetry, events, replies
DOWN = b"fleet-to-device"  # commands
KEY_LEN = 16
IV_LEN = 13


def path_in(directory):
    return os.path.join(str(directory), KEY_FILE)


def generate(path, force=False):
    """A new fleet data key at path (0600). Refuses to replace one unless
    force: every device provisioned with the old public key would send
    payloads nobody can open."""
    if os.path.exists(path) and not force:
        raise ToolError("a fleet data key already exists at %s: devices are provisioned with it; "
                        "pass --force only to replace it on purpose" % path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    key = pki.new_key()
    pki.write_key_pem(path, key)
    return key


def load(path):
    """The fleet data private key (file must not be readable by others)."""
    key = pki.load_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ToolError("%s is not a P-256 key" % path)
    return key


def ensure(directory):
    """Load <directory>/fleet-data.key, generating it on first use."""
    p = path_in(directory)
    if os.path.exists(p):
        return load(p)
    return generate(p)


def public_point(key):
    """The 65-byte uncompressed point (04 || x || y) of a key or public key."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def device_public(point_or_key):
    """A device's public key from its 65-byte point or a key object."""
    if isinstance(point_or_key, ec.EllipticCurvePublicKey):
        return point_or_key
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(point_or_key))
    except ValueError:
        raise ToolError("not a P-256 public key point") from None


def shared_secret(fleet_key, device_pub):
    """Z = ECDH(fleet data key, device public key): 32 bytes, the x-coordinate."""
    return fleet_key.exchange(ec.ECDH(), device_public(device_pub))


def derive(z, epoch, direction, device_id):
    """(16-byte key, 13-byte Base IV): HKDF-SHA256(Z, salt = epoch,
    info = "ironclad v1 <direction> <device id>"), as ironclad.telemetry.derive."""
    if isinstance(device_id, str):
        device_id = device_id.encode()
    okm = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN + IV_LEN, salt=bytes(epoch),
               info=b"ironclad v1 " + direction + b" " + device_id).derive(z)
    return okm[:KEY_LEN], okm[KEY_LEN:]
