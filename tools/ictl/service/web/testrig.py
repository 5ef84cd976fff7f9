"""A console for WEB's tests, soak and benchmark: the real HTTPS server on a
fresh SQLite file, a throw-away fleet CA, accounts enrolled through their
one-time links as an operator would, TOTP codes from pyotp with the secret
the enrolment page showed. Not used by the service itself."""
import html
import os
import re

import pyotp
import requests

from ictl import pki
from ictl.service import db as dbmod
from ictl.service.web import accounts, server

PASSWORD = "quartz-meadow-lantern-93"    # made up for the tests, not a common one
FAST = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1}


def csrf_of(page):
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if not m:
        raise AssertionError("no CSRF token in the page")
    return m.group(1)


class Rig:
    """start/stop a console in `tmp` (config merged over FAST unless
    fast_hash=False: then argon2id runs at the production cost)."""

    def __init__(self, tmp, config=None, fast_hash=True):
        self.tmp = str(tmp)
        self.pki_dir = os.path.join(self.tmp, "pki")
        if not pki.ca_exists(self.pki_dir):
            pki.init_ca(self.pki_dir, dev=True)
        kp, cp = server.ensure_web_cert(self.pki_dir)
        self.db_url = os.path.join(self.tmp, "service.db")
        self.config = dict(FAST if fast_hash else {}, **(config or {}))
        self.srv = server.start(self.db_url, "127.0.0.1", 0, cp, kp, self.config)
        self.url = self.srv.url.rstrip("/")
        self.db = dbmod.connect(self.db_url)
        self.secrets = {}

    def stop(self):
        self.srv.stop()
        self.db.close()

    def session(self):
        s = requests.Session()
        s.trust_env = False          # REQUESTS_CA_BUNDLE in the environment would replace verify=
        s.verify = os.path.join(self.pki_dir, pki.CA_CERT)
        return s

    def code(self, username):
        """A valid code for `username`; the replay guard is reset first (the
        server accepts each 30 s step once; replay has its own test)."""
        self.db.execute("UPDATE web_users SET totp_last_step = 0 WHERE username = ?", (username,))
        return pyotp.TOTP(self.secrets[username]).now()

    def enrol(self, token, username=None, password=PASSWORD):
        """Complete a setup link (username=None: the first administrator,
        named root-admin) or an enrolment link."""
        s = self.session()
        path = "/enrol/" + token if username else "/setup/" + token
        page = s.get(self.url + path, timeout=60).text
        secret = html.unescape(re.search(r'<code class="secret">([^<]+)</code>', page).group(1))
        data = {"csrf_token": csrf_of(page), "password": password, "password2": password,
                "code": pyotp.TOTP(secret).now()}
        if not username:
            data["username"] = username = "root-admin"
        r = s.post(self.url + path, data=data, timeout=60)
        if r.status_code != 200:
            raise AssertionError("enrolment failed: %s" % r.status_code)
        self.secrets[username] = secret
        return username

    def user(self, username, role):
        _, token = accounts.create_user(self.db, username, role)
        return self.enrol(token, username)

    def login(self, username, password=PASSWORD, code=None, s=None):
        s = s or self.session()
        page = s.get(self.url + "/login", timeout=60).text
        r = s.post(self.url + "/login", data={"csrf_token": csrf_of(page), "username": username,
                                              "password": password, "code": code or self.code(username)},
                   allow_redirects=False, timeout=60)
        return s, r

    def signed_in(self, username):
        s, r = self.login(username)
        if r.status_code != 302:
            raise AssertionError("login of %s failed: %s" % (username, r.status_code))
        return s

    def form(self, s, path, data, page="/account", **kw):
        token = csrf_of(s.get(self.url + page, timeout=60).text)
        return s.post(self.url + path, data=dict(data, csrf_token=token), allow_redirects=False, timeout=60, **kw)

    def reauth(self, username):
        return {"reauth_password": PASSWORD, "reauth_code": self.code(username)}
