"""The console for UI's tests (test_service_pages.py, test_service_browser.py):
the real HTTPS server (ictl.service.web.server) on a SQLite file, a
certificate from a throw-away fleet CA, and the first administrator made
through the one-time setup page, as an operator would (docs/console.md,
"First login").

    with Console(tmp) as con:
        s = con.login()                      # a requests.Session, signed in
        page = con.get(s, "/")

Accounts here use argon2id with a small cost (the hashing itself is WEB's,
tested there); everything else is the production path."""
import html
import os
import re
import time

import markupsafe
import pyotp
import requests

from ictl import pki
from ictl.service import db as dbmod
from ictl.service.web import accounts, server
from ictl.service.web.testrig import FAST as FAST_HASH
from ictl.service.web.testrig import csrf_of

PASSWORD = "violet-anchor-drift-47"  # made up for the test, not a common one
ADMIN = "ada"
# Hostile text a device may send (issue 16: script, HTML, SVG and template
# payloads); each must reach the browser as text, never as markup.
HOSTILE = ('<script>alert("x1")</script>', '"><img src=x onerror=alert(2)>', "<svg onload=alert(3)>",
           "{{7*7}}", "{% if 1 %}T{% endif %}")
# The same payloads as they would look had they been left unescaped (never
# in a page) and the escaped form that must be there instead.
RAW_MARKERS = ("<script>alert(", "<img src=x", "<svg onload")


class Totp:
    """An authenticator app: the code for the earliest time step the server
    still accepts (±1 step of now) and has not seen used, waiting for the
    next step when all are used (the server accepts each step once)."""

    def __init__(self, secret):
        self.totp = pyotp.TOTP(secret, interval=accounts.TOTP_PERIOD)
        self.last = 0

    def code(self):
        while True:
            t = time.time()
            now = int(t // accounts.TOTP_PERIOD)
            # The step before now only while it stays accepted for 15 s more
            # (the server checks a moment later, maybe on a loaded machine).
            early = now - accounts.TOTP_WINDOW if t % accounts.TOTP_PERIOD < accounts.TOTP_PERIOD - 15 else now
            for step in range(early, now + accounts.TOTP_WINDOW + 1):
                if step > self.last:
                    self.last = step
                    return self.totp.at(step * accounts.TOTP_PERIOD)
            time.sleep(0.5)


class Console:
    def __init__(self, tmp, pki_dir=None, config=None, db_url=None):
        self.tmp = os.path.abspath(str(tmp))
        self.pki_dir = pki_dir or os.path.join(self.tmp, "pki")
        self.db_url = db_url or os.path.join(self.tmp, "service.db")
        self.config = dict(FAST_HASH, **(config or {}))
        self.srv = None
        self.totp = None  # the first administrator's authenticator
        self.totps = {}

    def __enter__(self):
        os.makedirs(self.tmp, exist_ok=True)
        if not pki.ca_exists(self.pki_dir):
            pki.init_ca(self.pki_dir, dev=True)
        self.keyfile, self.certfile = server.ensure_web_cert(self.pki_dir)
        self.ca_path = os.path.join(self.pki_dir, pki.CA_CERT)
        self.srv = server.start(self.db_url, "127.0.0.1", 0, self.certfile, self.keyfile, self.config)
        self.url = self.srv.url.rstrip("/")
        self.db = dbmod.connect(self.db_url)
        return self

    def __exit__(self, *exc):
        if self.srv:
            self.srv.stop()
        self.db.close()

    def session(self):
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE would replace the fleet CA (and a proxy variable the loopback)
        s.verify = self.ca_path
        return s

    def get(self, s, path, status=200, **kw):
        r = s.get(self.url + path, timeout=30, **kw)
        assert r.status_code == status, (path, r.status_code, r.text[:2000])
        return r.text

    def post(self, s, path, data, status=200, page_path=None, **kw):
        """A form submission with the CSRF token of the page it is on."""
        token = csrf_of(self.get(s, page_path or path))
        r = s.post(self.url + path, data=dict(data, csrf_token=token), timeout=60, **kw)
        assert r.status_code == status, (path, r.status_code, r.text[:2000])
        return r.text

    def _onetime(self, path, data):
        """Complete a setup or enrolment link with the TOTP secret its page
        shows; returns that user's authenticator."""
        s = self.session()
        page = self.get(s, path)
        secret = html.unescape(re.search(r'<code class="secret">([^<]+)</code>', page).group(1))
        totp = Totp(secret)
        self.post(s, path, dict(data, password=PASSWORD, password2=PASSWORD, code=totp.code()))
        return totp

    def setup_admin(self, username=ADMIN):
        """The one-time setup link `ictl serve --init` prints -> the first
        administrator, enrolled in TOTP from the secret the page shows."""
        self.totps[username] = self._onetime("/setup/" + accounts.init_setup_token(self.db), {"username": username})
        self.totp = self.totps[username]

    def enrol(self, link_path, username):
        """A user created on the users page completes the enrolment link."""
        self.totps[username] = self._onetime(link_path, {})

    def login(self, username=ADMIN, password=PASSWORD):
        if username == ADMIN and ADMIN not in self.totps:
            self.setup_admin()
        s = self.session()
        self.get(s, "/login")
        self.post(s, "/login", {"username": username, "password": password, "code": self.totps[username].code()})
        assert "Sign out" in self.get(s, "/account")
        return s

    def reauth(self, username=ADMIN):
        """The password + fresh code fields of a re-authenticated form."""
        return {"reauth_password": PASSWORD, "reauth_code": self.totps[username].code()}


def escaped(text):
    """text as the pages' templates write it (Jinja2 autoescape: markupsafe)."""
    return str(markupsafe.escape(text))


def assert_escaped(page, payloads=HOSTILE):
    """Every payload appears, and only as text: its escaped form is there
    (template payloads as written, not evaluated), no raw marker is."""
    for raw in RAW_MARKERS:
        assert raw not in page, raw
    for p in payloads:
        assert escaped(p) in page, p
