# PKCS#10 certificate signing request (RFC 2986) for the device's P-256 key:
# subject CN=<name>, no attributes, signed ecdsa-with-SHA256. The private key
# is used here and stays in this process; only the CSR leaves the device.
import hashlib
from micropython import const

from ironclad import der
from ironclad import p256

# X.520 ub-common-name: a CA refuses longer CNs, so fail here, not there.
_MAX_CN = const(64)


def build_csr(d, pub, common_name):
    """DER CertificationRequest for key (d, pub) with subject CN=common_name."""
    cn = common_name.encode("utf-8")
    if not cn or len(cn) > _MAX_CN:
        raise ValueError("common name must be 1..64 bytes")
    # Name ::= SEQUENCE OF RelativeDistinguishedName (a SET OF one
    # AttributeTypeAndValue). UTF8String, as RFC 5280 asks of new names.
    subject = der.sequence(der.set_of(der.sequence(der.oid(der.OID_COMMON_NAME), der.utf8_string(common_name))))
    info = der.sequence(
        der.integer(0),  # version v1
        subject,
        der.spki_p256_encode(pub),
        der.context(0, b""),  # attributes [0] IMPLICIT SET OF Attribute: empty
    )
    r, s = p256.sign(d, hashlib.sha256(info).digest())
    return der.sequence(
        info,
        # AlgorithmIdentifier for ECDSA carries no parameters (RFC 5758 3.2).
        der.sequence(der.oid(der.OID_ECDSA_SHA256)),
        der.bit_string(der.ecdsa_sig_encode(r, s)),
    )
