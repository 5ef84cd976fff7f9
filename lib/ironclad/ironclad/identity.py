# The device's provisioned identity, read from the keystore: device id, broker
# settings, the fleet's data public key, and the mutual-TLS context.
#
#   from ironclad import identity
#   me = identity.require()              # NotProvisioned (+ security event) if
#                                        # the board is not provisioned
#   ctx = me.tls_context()               # CERT_REQUIRED, fleet CA, device key
#   sock = ctx.wrap_socket(s, server_hostname=me.hostname)   # name checked
#
# The private key is read from the keystore only while the context is built
# and is never an attribute of anything here.
import json

from ironclad.keystore import KeyStore, KeyStoreError

HINT = "connect it over USB and run `ictl provision --port PORT`"


class NotProvisioned(Exception):
    """The board has no complete, authentic set of credentials."""


class Identity:
    def __init__(self, ks, device_id, broker, fleet_data_pub):
        self._ks = ks
        self.device_id = device_id
        self.host = broker["host"]
        self.port = broker["port"]
        self.hostname = broker["hostname"]
        self.prefix = broker["prefix"]
        # The time server to set the clock from before TLS (ironclad.clock),
        # (host, port) or None.
        self.ntp = ntp_server(broker["ntp"]) if "ntp" in broker else None
        self.fleet_data_pub = fleet_data_pub

    def __repr__(self):
        return "<Identity %s broker %s:%d>" % (self.device_id, self.host, self.port)

    def topic(self, kind):
        """<prefix>/<device id>/<kind>: the topics the broker's ACL allows."""
        return "%s/%s/%s" % (self.prefix, self.device_id, kind)

    def tls_context(self):
        return tls_context(self._ks)


def ntp_server(text):
    """(host, port) of a time server setting "host[:port]" (port 123 when
    none is given): a DNS name or IPv4 address. ValueError if malformed."""
    host, sep, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not sep:
        host, port = text, "123"
    ok = isinstance(host, str) and 0 < len(host) <= 253 and port.isdigit() and 0 < int(port) < 65536
    for c in host if ok else "":
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in ".-"):
            ok = False
    if not ok:
        raise ValueError("time server %r is not host[:port]" % (text,))
    return host, int(port)


def _broker(raw):
    try:
        b = json.loads(raw)
        ok = (isinstance(b["host"], str) and b["host"] and isinstance(b["port"], int) and 0 < b["port"] < 65536
              and isinstance(b["hostname"], str) and b["hostname"] and isinstance(b["prefix"], str) and b["prefix"]
              and ("ntp" not in b or ntp_server(b["ntp"])))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise NotProvisioned("device credentials unusable: broker settings are malformed")
    return b


def load(ks=None):
    """The Identity, or NotProvisioned saying what is missing or unusable."""
    ks = ks or KeyStore()
    try:
        if ks.get("provisioned") is None:
            raise NotProvisioned("device is not provisioned: " + HINT)
        have = ks.names()
        for n in ("device_key", "cert", "ca"):
            if n not in have:
                raise NotProvisioned("device credentials incomplete (no %s): %s" % (n, HINT))
        dev = ks.get("device_id")
        broker = ks.get("broker")
        pub = ks.get("fleet_data_pub")
    except KeyStoreError as e:
        raise NotProvisioned("device credentials unusable: %s" % e)
    if not dev or not broker or not pub or len(pub) != 65:
        raise NotProvisioned("device credentials incomplete: " + HINT)
    return Identity(ks, dev.decode(), _broker(broker), pub)


def require(ks=None):
    """The agent's gate before any network service: the Identity; on a board
    that is not provisioned (or whose credentials do not authenticate),
    record a security event and raise NotProvisioned with a message for the log."""
    try:
        return load(ks)
    except NotProvisioned as e:
        from ironclad import events

        events.record("provisioning", "not_provisioned", detail=str(e))
        raise


def split_certs(data):
    """Concatenated DER certificates -> list of each one's bytes."""
    from ironclad import der

    out = []
    pos = 0
    end = len(data)
    while pos < end:
        _, _, stop = der.read(data, pos, end)
        out.append(data[pos:stop])
        pos = stop
    return out


def tls_context(ks=None):
    """An ssl.SSLContext for mutual TLS with the fleet broker: the broker must
    present a certificate from the keystore's CA (CERT_REQUIRED; pass
    server_hostname to wrap_socket so its name is checked too), and the
    device authenticates with its certificate and private key."""
    import ssl

    ks = ks or KeyStore()
    try:
        ca = ks.get("ca")
        cert = ks.get("cert")
        key = ks.get("device_key")
    except KeyStoreError as e:
        raise NotProvisioned("device credentials unusable: %s" % e)
    if not (ca and cert and key):
        raise NotProvisioned("device credentials incomplete: " + HINT)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # MicroPython's client context verifies nothing unless told to.
    ctx.verify_mode = ssl.CERT_REQUIRED
    for c in split_certs(ca):
        ctx.load_verify_locations(cadata=c)
    ctx.load_cert_chain(cert, key)
    return ctx
