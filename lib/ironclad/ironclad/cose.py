# COSE_Encrypt0 (RFC 9052 section 5.2) with AES-CCM-16-64-128 (COSE algorithm 10:
# 128-bit key, 8-byte tag, 13-byte nonce).
#
#   COSE_Encrypt0 = #6.16([ protected: bstr .cbor {1: 10},
#                            unprotected: {? 4: kid, 5: IV / 6: Partial IV},
#                            ciphertext: bstr ])
#   AAD = Enc_structure = ["Encrypt0", protected (the bstr as sent), external_aad]
#
# Two ways to carry the nonce:
#   * IV (label 5): the whole 13-byte nonce; any COSE library opens it with the
#     key alone. Overhead for a 64-byte payload: 32 bytes.
#   * Partial IV (label 6) with a Base IV both sides derive with the key (RFC 9052
#     section 3.1: nonce = Base IV xor left-padded Partial IV). The device's nonce
#     is a counter anyway, so the Partial IV is just that counter in as few bytes
#     as it needs: overhead 19 + len(Partial IV), 22 bytes at counter < 2**24.
#
# The protected header is always exactly {1: 10} (bstr h'A1010A'), so the sending
# side writes the message and the Enc_structure from constant prefixes: no CBOR
# encoder runs per message and the ciphertext is written by CCM straight into
# the output buffer. The receiving side parses with the bounded decoder and takes
# the AAD from the protected bytes as received, never from a re-encoding.
from micropython import const
from ironclad import cbor
from ironclad.ccm import CCM, AuthError  # noqa: F401 (AuthError is part of this API)

ALG_AES_CCM_16_64_128 = const(10)
_H_ALG = const(1)
_H_CRIT = const(2)
_H_KID = const(4)
_H_IV = const(5)
_H_PIV = const(6)
_COSE_ENCRYPT0 = const(16)  # CBOR tag

_KEY_LEN = const(16)
_NONCE_LEN = const(13)
_TAG_LEN = const(8)
_BSTR = const(2)

# Bound on a received message (STYLE rule 1): telemetry and commands are far
# smaller, and decrypting takes about four times the message in RAM (message,
# keystream, MAC input, plaintext) out of a 96 KiB heap.
MAX_MESSAGE = const(8192)
_MAX_KID = const(64)

# #6.16 (0xD0), array(3) (0x83), bstr(3) (0x43) holding {1: 10} (0xA1 0x01 0x0A).
_MSG_PREFIX = b"\xd0\x83\x43\xa1\x01\x0a"
_MSG_IV = _MSG_PREFIX + b"\xa1\x05"  # ... {5: (IV)
_MSG_PIV = _MSG_PREFIX + b"\xa1\x06"  # ... {6: (Partial IV)
# ["Encrypt0", h'A1010A', ...: array(3), tstr(8) "Encrypt0", bstr(3) {1: 10}.
_ENC_PREFIX = b"\x83\x68Encrypt0\x43\xa1\x01\x0a"
_ENC_NO_EXT = _ENC_PREFIX + b"\x40"  # ... external_aad = h''
_ENC_HEAD = b"\x83\x68Encrypt0"


class CoseError(ValueError):
    """Malformed message or a header this implementation does not accept."""


def _enc_structure(protected, external_aad):
    if protected is None:
        # Ours: the constant protected header.
        if not external_aad:
            return _ENC_NO_EXT
        return _ENC_PREFIX + cbor.head(_BSTR, len(external_aad)) + bytes(external_aad)
    return (_ENC_HEAD + cbor.head(_BSTR, len(protected)) + bytes(protected)
            + cbor.head(_BSTR, len(external_aad)) + bytes(external_aad))


def partial_iv(seq):
    """A counter as a Partial IV: big-endian, as few bytes as it needs (>= 1)."""
    if seq < 0 or seq >= 1 << (8 * _NONCE_LEN):
        raise ValueError("partial iv out of range")
    n = 1
    while seq >> (8 * n):
        n += 1
    return seq.to_bytes(n, "big")


class Encrypt0:
    """COSE_Encrypt0 under one key. Keeps the CCM object (key schedules and
    work buffers): the way to protect a stream of messages."""

    def __init__(self, key, base_iv=None):
        if len(key) != _KEY_LEN:
            raise ValueError("cose key must be 16 bytes (AES-CCM-16-64-128)")
        if base_iv is not None and len(base_iv) != _NONCE_LEN:
            raise ValueError("base iv length")
        self._ccm = CCM(key, _TAG_LEN, _NONCE_LEN)
        # Base IV as an integer (None: none), kept in this form only: RFC
        # 9052 section 3.1's nonce, the Partial IV left-padded to the nonce
        # length and XORed with the Base IV, is then one integer XOR.
        self._base = int.from_bytes(base_iv, "big") if base_iv is not None else None
        # The last external AAD and its Enc_structure: a sender keeps sealing
        # for the same few topics, so the structure is built once per topic
        # change, not once per message.
        self._aad = None
        self._aad_enc = _ENC_NO_EXT

    def _seal(self, nonce, label, iv, pt, external_aad, kid, out):
        # Message = prefix, unprotected map, bstr head, and then CCM writes the
        # ciphertext and tag straight into the same buffer (no join, no copy).
        n = len(pt)
        c = n + _TAG_LEN
        if c > 0xFFFF:
            # Also CCM's limit with a 13-byte nonce (2-byte length field).
            raise ValueError("cose payload too long")
        if kid is None:
            lp = 7  # where the IV label goes, after the map head
        else:
            kl = len(kid)
            if kl > _MAX_KID:
                raise ValueError("kid too long")
            lp = 9 + kl + (kl > 23)  # map head, label 4, bstr head, kid
        il = len(iv)
        q = lp + 2 + il  # the ciphertext's bstr head
        # That head is 1, 2 or 3 bytes (c < 65536, checked above).
        hl = q + (1 if c < 24 else (2 if c < 0x100 else 3))
        if out is None:
            out = bytearray(hl + c)
            ret = out
        else:
            if len(out) < hl + c:
                raise ValueError("cose output buffer too small")
            ret = memoryview(out)[:hl + c]
        if kid is None:
            # Prefix, map(1), label: one constant per label.
            out[0:8] = _MSG_IV if label == _H_IV else _MSG_PIV
        else:
            out[0:6] = _MSG_PREFIX
            out[6] = 0xA2
            out[7] = _H_KID
            if kl > 23:
                out[8] = 0x58
                out[9] = kl
            else:
                out[8] = 0x40 | kl
            out[lp - kl:lp] = kid
            # Map entries in label order (4 < 5 < 6): deterministic encoding.
            out[lp] = label
        # The IV or Partial IV is at most 13 bytes, so its head is one byte.
        out[lp + 1] = 0x40 | il
        out[lp + 2:q] = iv
        if c < 24:
            out[q] = 0x40 | c
        elif c < 0x100:
            out[q] = 0x58
            out[q + 1] = c
        else:
            out[q] = 0x59
            out[q + 1] = c >> 8
            out[q + 2] = c & 0xFF
        if not external_aad:
            enc = _ENC_NO_EXT
        elif external_aad == self._aad:
            enc = self._aad_enc
        else:
            enc = self._aad_enc = _enc_structure(None, external_aad)
            self._aad = bytes(external_aad)
        self._ccm.encrypt_into(nonce, enc, pt, out, hl)
        return ret

    def encrypt(self, nonce, pt, external_aad=b"", kid=None, out=None):
        """Protect pt with the full 13-byte nonce in the IV header (label 5).

        Returns the tagged COSE_Encrypt0 as a new bytearray; or, given out (a
        bytearray reused from message to message, so protecting allocates
        nothing), writes it there and returns a memoryview of it."""
        if len(nonce) != _NONCE_LEN:
            raise ValueError("cose nonce must be 13 bytes")
        return self._seal(nonce, _H_IV, nonce, pt, external_aad, kid, out)

    def encrypt_seq(self, seq, pt, external_aad=b"", kid=None, out=None):
        """Protect pt with nonce = Base IV xor seq; seq goes in the Partial IV
        header (label 6). The caller never reuses a seq under one key.
        Returns as encrypt() does."""
        if self._base is None:
            raise ValueError("no base iv")
        piv = partial_iv(seq)
        return self._seal((self._base ^ seq).to_bytes(_NONCE_LEN, "big"), _H_PIV, piv, pt, external_aad, kid, out)

    def decrypt(self, msg, external_aad=b""):
        """Tagged or untagged COSE_Encrypt0 -> plaintext (bytes).
        Raises CoseError on a malformed message, AuthError on a bad tag."""
        return self._open(msg, external_aad, False)[1]

    def decrypt_seq(self, msg, external_aad=b""):
        """Open a message that must carry a Partial IV -> (seq, plaintext).
        seq is the Partial IV as an integer; it is authenticated (it is part
        of the nonce), so a receiver can use it as a replay counter."""
        return self._open(msg, external_aad, True)

    def _open(self, msg, external_aad, need_piv):
        if len(msg) > MAX_MESSAGE:
            raise CoseError("message too long")
        try:
            obj = cbor.decode(msg, max_depth=4, max_items=32, views=True)
        except cbor.CBORError as e:
            raise CoseError("cbor: %s" % e)
        if isinstance(obj, cbor.Tag):
            if obj.tag != _COSE_ENCRYPT0:
                raise CoseError("not a COSE_Encrypt0 tag")
            obj = obj.value
        if not isinstance(obj, list) or len(obj) != 3:
            raise CoseError("not a COSE_Encrypt0 array")
        prot, unprot, ct = obj
        if not isinstance(prot, memoryview) or not isinstance(unprot, dict):
            raise CoseError("bad header buckets")
        if not isinstance(ct, memoryview):
            # nil would mean detached content: not used here.
            raise CoseError("ciphertext must be a bstr")
        ph = {}
        if len(prot):
            try:
                ph = cbor.decode(prot, max_depth=2, max_items=16)
            except cbor.CBORError as e:
                raise CoseError("protected header: %s" % e)
            if not isinstance(ph, dict):
                raise CoseError("protected header is not a map")
        # The algorithm must be integrity protected, or an attacker could
        # relabel the message.
        if ph.get(_H_ALG) != ALG_AES_CCM_16_64_128:
            raise CoseError("protected alg must be 10 (AES-CCM-16-64-128)")
        if _H_CRIT in ph:
            raise CoseError("critical headers not supported")
        for label in ph:
            if label in unprot:
                # RFC 9052 section 3: a label must not be in both buckets.
                raise CoseError("header label in both buckets")
        iv = unprot.get(_H_IV, ph.get(_H_IV))
        piv = unprot.get(_H_PIV, ph.get(_H_PIV))
        if iv is not None and piv is not None:
            raise CoseError("both IV and Partial IV")
        if need_piv and piv is None:
            raise CoseError("no Partial IV")
        if iv is not None:
            if not isinstance(iv, (bytes, memoryview)) or len(iv) != _NONCE_LEN:
                raise CoseError("IV must be a 13-byte bstr")
            nonce = bytes(iv)
        elif piv is not None:
            if not isinstance(piv, (bytes, memoryview)) or not 1 <= len(piv) <= _NONCE_LEN:
                raise CoseError("bad Partial IV")
            if self._base is None:
                raise CoseError("Partial IV but no base iv")
            nonce = (self._base ^ int.from_bytes(piv, "big")).to_bytes(_NONCE_LEN, "big")
        else:
            raise CoseError("no IV")
        pt = self._ccm.decrypt(nonce, _enc_structure(prot, external_aad), ct)
        return (int.from_bytes(piv, "big") if piv is not None else None), pt


def encrypt0(key, nonce, plaintext, external_aad=b"", kid=None):
    """COSE_Encrypt0, AES-CCM-16-64-128, nonce in the IV header -> bytearray."""
    return Encrypt0(key).encrypt(nonce, plaintext, external_aad, kid)


def encrypt0_seq(key, base_iv, seq, plaintext, external_aad=b"", kid=None):
    """COSE_Encrypt0 with a Partial IV (seq) against base_iv -> bytearray."""
    return Encrypt0(key, base_iv).encrypt_seq(seq, plaintext, external_aad, kid)


def decrypt0(key, msg, external_aad=b"", base_iv=None):
    """Open a COSE_Encrypt0 (IV, or Partial IV with base_iv) -> plaintext."""
    return Encrypt0(key, base_iv).decrypt(msg, external_aad)
