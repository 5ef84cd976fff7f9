"""The console's HTTPS server: cheroot (CherryPy's WSGI server) with the
standard library's ssl, TLS 1.2 at least, no plain-HTTP listener at all.

    srv = server.start(db_url, "127.0.0.1", 0, certfile, keyfile, config)
    srv.url      # https://127.0.0.1:<port>/
    srv.stop()

The certificate comes from the fleet PKI (`ensure_web_cert(pki_dir, hosts)`
issues web.key/web.crt with the fleet CA, serverAuth, SAN = hosts) or is the
operator's own pair. The server binds 127.0.0.1 unless told otherwise; it
keeps nothing per user in memory (sessions live in the database), so several
instances can serve one database behind a TLS load balancer.

config keys (all optional; defaults in web.app.DEFAULTS): session_idle,
session_absolute, reauth_window, lockout_threshold, lockout_window,
lockout_duration, source_threshold, source_window, source_block, setup_ttl,
enrol_ttl, reset_ttl, argon2_time_cost,
argon2_memory_kib, argon2_parallelism, token_max_ttl, sensitive_token_ttl,
max_upload, threads (default 8), totp_key_file (default web-totp.key beside
keyfile: the key that seals TOTP secrets; every instance serving one
database needs the same file).
"""
import os
import ssl
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from ictl import pki
from ictl.service import db as dbmod
from ictl.service.web import accounts, app as webapp

WEB_KEY = "web.key"
WEB_CERT = "web.crt"


def ensure_web_cert(pki_dir, hosts=pki.DEFAULT_SERVER_HOSTS):
    """web.key/web.crt in the fleet CA's directory, issued by the fleet CA
    when missing, expiring, from another CA or lacking a host. Returns
    (keyfile, certfile)."""
    ca = pki.load_ca(pki_dir)
    kp, cp = os.path.join(ca.dir, WEB_KEY), os.path.join(ca.dir, WEB_CERT)
    if pki._cert_ok(ca, cp) and os.path.exists(kp) and set(hosts) <= _sans(pki.load_cert(cp)):
        return kp, cp
    key, cert = pki.issue_server_cert(ca, hosts)
    pki.write_key_pem(kp, key)
    pki.write_cert_pem(cp, cert)
    return kp, cp


def _sans(cert):
    from cryptography import x509
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | \
        {str(v) for v in san.get_values_for_type(x509.IPAddress)}


class _Adapter(BuiltinSSLAdapter):
    """cheroot's adapter with TLS 1.2 as the floor."""

    def __init__(self, certfile, keyfile):
        super().__init__(certfile, keyfile)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2


class WebServer:
    def __init__(self, db, app, httpd, thread, host):
        self.db, self.app, self._httpd, self._thread = db, app, httpd, thread
        self.host = host
        self.port = httpd.bind_addr[1]
        shown = "[%s]" % host if ":" in host else host
        self.url = "https://%s:%d/" % (shown, self.port)

    def stop(self):
        self._httpd.stop()
        self._thread.join(timeout=10)
        self.db.close()


def start(db_url, host="127.0.0.1", port=0, certfile=None, keyfile=None, config=None):
    """Serve the console over HTTPS in a background thread; returns a
    WebServer (.url, .port, .stop()). The database is migrated first."""
    if not certfile or not keyfile:
        raise ValueError("the console is HTTPS only: give certfile and keyfile (ensure_web_cert)")
    db = dbmod.connect(db_url)
    db.migrate()
    config = dict(config or {})
    if not config.get("totp_key"):
        # Beside the TLS key: a secret of the web tier, kept out of the database.
        path = config.get("totp_key_file") or os.path.join(os.path.dirname(os.path.abspath(keyfile)),
                                                           accounts.TOTP_KEY_FILE)
        config["totp_key"] = accounts.load_totp_key(path)
    app = webapp.create_app(db, config)
    httpd = wsgi.Server((host, int(port)), app, numthreads=int(config.get("threads", 8)),
                        server_name="ironclad-console")
    # Bounds on what a client can make the server hold (STYLE 1): headers
    # (cookies included) 64 KiB, a body the largest update upload plus 64 KiB
    # of form overhead; cheroot answers 413/431 past them.
    httpd.max_request_header_size = 64 * 1024
    httpd.max_request_body_size = int(app.config["ICTL"].config["max_upload"]) + 64 * 1024
    httpd.ssl_adapter = _Adapter(certfile, keyfile)
    httpd.prepare()                         # binds: bind_addr now has the real port
    t = threading.Thread(target=httpd.serve, name="ictl-web", daemon=True)
    t.start()
    return WebServer(db, app, httpd, t, host)
