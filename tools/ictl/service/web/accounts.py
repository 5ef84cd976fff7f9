"""Console accounts: argon2id passwords, TOTP, lockout, one-time tokens.

No default account exists. `init_setup_token(db)` (printed once by
`ictl serve --init`) lets whoever holds it create the first administrator at
/setup/<token>; later accounts are made by an administrator (`create_user`
returns a single-use enrolment link), and a forgotten password or lost phone
is handled the same way (`issue_reset_token`): there is no self-service
"forgot password" form, so nothing can be asked about an account's existence.

`authenticate` is the one login check. It always runs exactly one argon2id
verification (against a fixed dummy hash for an unknown user) and one TOTP
comparison, and returns the same failure for an unknown user, a wrong
password or code, a disabled and a locked account, so neither the answer nor
its timing tells them apart. After `lockout_threshold` failures within
`lockout_window` seconds the account is locked for `lockout_duration`
seconds; a locked account's correct credentials fail too.

TOTP secrets are kept sealed (AES-256-GCM, the user id as associated data)
under a key held outside the database (`totp_key`, the file web-totp.key
beside the console's TLS key, made by server.start): a copy of the database
alone (a backup, an SQL injection elsewhere) gives no second factor, and a
sealed secret copied to another user's row does not open there. A pending
secret (shown on an enrolment/reset page) is not stored at all: it is
derived from the one-time token and that key, so the used link alone does
not give it either.
"""
import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time

import argon2
import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ictl.service.web import permissions

USERNAME_MAX = 64
PASSWORD_MIN = 12
PASSWORD_MAX = 256        # argon2 hashes anything, but bound the work per request
TOTP_PERIOD = 30
TOTP_WINDOW = 1           # steps accepted either side of now (clock skew)

DEFAULTS = {
    "lockout_threshold": 5,
    "lockout_window": 900.0,
    "lockout_duration": 900.0,
    # Per source address, across accounts (password spraying): higher than
    # the per-account threshold, since an office behind one NAT shares it.
    "source_threshold": 20,
    "source_window": 900.0,
    "source_block": 900.0,
    "setup_ttl": 3600.0,
    "enrol_ttl": 86400.0,
    "reset_ttl": 3600.0,
    # argon2id parameters: argon2-cffi's defaults, RFC 9106's second
    # recommended option (t=3, 64 MiB, p=4).
    "argon2_time_cost": 3,
    "argon2_memory_kib": 65536,
    "argon2_parallelism": 4,
    "argon2_concurrency": 2,      # hashes computed at once (memory bound)
}


class AccountError(Exception):
    """A refused account operation; the message is safe to show."""


def _now():
    return time.time()


def _digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix=""):
    return prefix + secrets.token_urlsafe(32)


# ---------------------------------------------------------------- passwords

_COMMON = None


def _common_passwords():
    """The 30,000 most common passwords of zxcvbn's frequency lists (the
    pinned zxcvbn package ships them: from leaked-password corpora; see
    docs/console.md)."""
    global _COMMON
    if _COMMON is None:
        from zxcvbn.frequency_lists import FREQUENCY_LISTS
        _COMMON = frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])
    return _COMMON


def password_problem(password, username=""):
    """None if `password` is acceptable, else the reason (safe to show)."""
    if not isinstance(password, str) or len(password) < PASSWORD_MIN:
        return "the password must have at least %d characters" % PASSWORD_MIN
    if len(password) > PASSWORD_MAX:
        return "the password must have at most %d characters" % PASSWORD_MAX
    low = password.lower()
    if low in _common_passwords() or low.rstrip("0123456789!") in _common_passwords():
        return "this password is on the list of common passwords"
    if username and username.lower() in low:
        return "the password must not contain the user name"
    if len(set(password)) < 5:
        return "the password repeats too few characters"
    return None


def check_username(username):
    if not isinstance(username, str) or not 1 <= len(username) <= USERNAME_MAX:
        raise AccountError("user name: 1 to %d characters" % USERNAME_MAX)
    if not all(c.isalnum() or c in "._-@" for c in username) or not username.isascii():
        raise AccountError("user name: letters, digits and . _ - @ only")
    return username


TOTP_KEY_FILE = "web-totp.key"
SEALED = "gcm1:"
_log = logging.getLogger("ictl.web")


def load_totp_key(path):
    """The 32-byte key that seals TOTP secrets, from `path`; made (random,
    mode 0600) when missing. Every web instance serving one database needs
    the same file, as it needs the same TLS key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    with open(path, "rb") as f:
        key = f.read()
    if len(key) != 32:
        raise ValueError("%s: a TOTP sealing key is 32 bytes, this file has %d" % (path, len(key)))
    return key


class Hasher:
    """argon2id with the configured cost, and a dummy hash of the same cost
    so an unknown user costs exactly what a known one does; and the sealing
    of TOTP secrets under config["totp_key"] (without one, a key for this
    process's lifetime: for tools and tests that make and check accounts in
    one process; the server always passes a persistent one)."""

    def __init__(self, config):
        key = config.get("totp_key") or AESGCM.generate_key(bit_length=256)
        self._box = AESGCM(key)
        self._pending_key = hmac.new(key, b"ironclad console: pending TOTP secrets", "sha256").digest()
        self.ph = argon2.PasswordHasher(time_cost=int(config["argon2_time_cost"]),
                                        memory_cost=int(config["argon2_memory_kib"]),
                                        parallelism=int(config["argon2_parallelism"]),
                                        type=argon2.Type.ID)
        self.dummy = self.ph.hash(secrets.token_urlsafe(24))
        # At most this many hashes at once: each holds argon2_memory_kib, and
        # sign-in is open to anyone (8 server threads x 64 MiB otherwise).
        self.slots = threading.BoundedSemaphore(int(config.get("argon2_concurrency", 2)))

    def hash(self, password):
        with self.slots:
            return self.ph.hash(password)

    def verify(self, stored, password):
        with self.slots:
            try:
                return self.ph.verify(stored or self.dummy, password) and stored is not None
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

    def seal_totp(self, user_id, secret):
        nonce = secrets.token_bytes(12)
        return SEALED + base64.b64encode(nonce + self._box.encrypt(nonce, secret.encode(), user_id.encode())).decode()

    def open_totp(self, user_id, stored):
        """The secret, or None when there is none or it does not open (sealed
        under another key, or not this user's row): then no code matches."""
        if not stored:
            return None
        if not stored.startswith(SEALED):
            return stored  # stored before sealing: sealed at the user's next sign-in
        try:
            raw = base64.b64decode(stored[len(SEALED):], validate=True)
            return self._box.decrypt(raw[:12], raw[12:], user_id.encode()).decode()
        except (ValueError, InvalidTag):
            _log.error("the TOTP secret of user %s does not open with this server's totp_key "
                       "(another instance's key file, or the row was altered)", user_id)
            return None

    def pending_totp(self, token):
        """The secret a one-time link enrols: derived from the token and the
        key, never stored."""
        mac = hmac.new(self._pending_key, token.encode(), "sha256").digest()
        return base64.b32encode(mac[:20]).decode()


# ---------------------------------------------------------------- TOTP (RFC 6238)

def totp_uri(secret, username, issuer="Ironclad fleet console"):
    return pyotp.TOTP(secret, interval=TOTP_PERIOD).provisioning_uri(name=username, issuer_name=issuer)


def totp_qr_svg(uri):
    """The otpauth URI as an inline SVG QR code (no script, no style)."""
    import segno
    return segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff", omitsize=False)


def totp_step(secret, code, last_step, now=None):
    """The time step `code` matches (within ±TOTP_WINDOW) if it is later than
    `last_step` (a code is used once: replays fail), else None."""
    if not isinstance(code, str) or not code.isdigit() or len(code) != 6 or not secret:
        return None
    now = _now() if now is None else now
    t = pyotp.TOTP(secret, interval=TOTP_PERIOD)
    step = int(now // TOTP_PERIOD)
    found = None
    for s in range(step - TOTP_WINDOW, step + TOTP_WINDOW + 1):
        if hmac.compare_digest(t.at(s * TOTP_PERIOD), code) and s > (last_step or 0):
            found = s
    return found


# ---------------------------------------------------------------- users

def _user_id():
    return "u_" + secrets.token_hex(8)


def get_user(db, user_id):
    return db.one("SELECT * FROM web_users WHERE id = ?", (user_id,))


def list_users(db):
    """Every account without secrets, for the users page."""
    now = _now()
    rows = db.query("SELECT id, username, role, disabled, failed_count, locked_until, created_at,"
                    " updated_at, password_hash IS NOT NULL AS enrolled FROM web_users ORDER BY username")
    for r in rows:
        r["locked"] = bool(r["locked_until"] and r["locked_until"] > now)
        r["enrolled"] = bool(r["enrolled"])
        r["disabled"] = bool(r["disabled"])
    return rows


def _check_role(role):
    if role not in permissions.ROLES:
        raise AccountError("role must be one of %s" % ", ".join(permissions.ROLES))
    return role


def _issue_onetime(db, kind, user_id, ttl):
    # pending_totp stays NULL: the secret is Hasher.pending_totp(token).
    token = new_token()
    now = _now()
    db.execute("INSERT INTO web_onetime (token_hash, kind, user_id, created_at, expires_at)"
               " VALUES (?, ?, ?, ?, ?)", (_digest(token), kind, user_id, now, now + ttl))
    return token


def create_user(db, username, role, config=None):
    """A new, not yet usable account; returns (user_id, enrolment token).
    The token is shown once to the administrator, who hands over the link
    /enrol/<token>; it sets the password and the TOTP secret."""
    cfg = dict(DEFAULTS, **(config or {}))
    check_username(username)
    _check_role(role)
    now = _now()
    uid = _user_id()
    with db.transaction():
        if db.one("SELECT id FROM web_users WHERE username = ?", (username,)):
            raise AccountError("that user name is taken")
        db.execute("INSERT INTO web_users (id, username, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                   (uid, username, role, now, now))
        token = _issue_onetime(db, "enrol", uid, cfg["enrol_ttl"])
    return uid, token


def init_setup_token(db, config=None):
    """The one-time token that creates the first administrator (printed by
    `ictl serve --init`). Refused once any administrator exists; a new call
    voids the earlier setup tokens."""
    cfg = dict(DEFAULTS, **(config or {}))
    with db.transaction():
        if db.one("SELECT id FROM web_users WHERE role = 'administrator' AND password_hash IS NOT NULL"):
            raise AccountError("an administrator exists already: further accounts are made on the users page")
        db.execute("DELETE FROM web_onetime WHERE kind = 'setup'")
        return _issue_onetime(db, "setup", None, cfg["setup_ttl"])


def issue_reset_token(db, user_id, config=None):
    """Administrator-issued reset: a single-use, expiring link /reset/<token>
    that sets a new password and a new TOTP secret. Earlier reset links and
    the user's sessions and API tokens are voided."""
    cfg = dict(DEFAULTS, **(config or {}))
    with db.transaction():
        if not get_user(db, user_id):
            raise AccountError("no such user")
        db.execute("DELETE FROM web_onetime WHERE user_id = ? AND kind IN ('reset', 'enrol')", (user_id,))
        drop_sessions(db, user_id)
        return _issue_onetime(db, "reset", user_id, cfg["reset_ttl"])


def onetime(db, hasher, token, kinds):
    """The live one-time token row (kind in `kinds`) with its pending TOTP
    secret, or None."""
    if not isinstance(token, str) or len(token) > 128:
        return None
    row = db.one("SELECT * FROM web_onetime WHERE token_hash = ?", (_digest(token),))
    if row is None or row["kind"] not in kinds or row["used_at"] is not None or row["expires_at"] < _now():
        return None
    row["pending_totp"] = hasher.pending_totp(token)
    return row


def redeem(db, hasher, token, kinds, username, password, code):
    """Complete a setup/enrol/reset link: checks the password policy and the
    TOTP code against the pending secret, then sets both, marks the token
    used (once only) and returns the user row. Raises AccountError."""
    row = onetime(db, hasher, token, kinds)
    if row is None:
        raise AccountError("this link is invalid, used or expired: ask an administrator for a new one")
    if row["kind"] == "setup":
        check_username(username)
    else:
        username = get_user(db, row["user_id"])["username"]
    problem = password_problem(password, username)
    if problem:
        raise AccountError(problem)
    step = totp_step(row["pending_totp"], code, 0)
    if step is None:
        raise AccountError("the authenticator code does not match: check the phone's clock and scan again")
    pw = hasher.hash(password)
    now = _now()
    with db.transaction():
        n = db.execute("UPDATE web_onetime SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
                       (now, row["token_hash"]))
        if n != 1:
            raise AccountError("this link is invalid, used or expired: ask an administrator for a new one")
        if row["kind"] == "setup":
            if db.one("SELECT id FROM web_users WHERE role = 'administrator' AND password_hash IS NOT NULL"):
                raise AccountError("an administrator exists already")
            if db.one("SELECT id FROM web_users WHERE username = ?", (username,)):
                raise AccountError("that user name is taken")
            uid = _user_id()
            db.execute("INSERT INTO web_users (id, username, role, password_hash, totp_secret, totp_last_step,"
                       " created_at, updated_at) VALUES (?, ?, 'administrator', ?, ?, ?, ?, ?)",
                       (uid, username, pw, hasher.seal_totp(uid, row["pending_totp"]), step, now, now))
        else:
            uid = row["user_id"]
            db.execute("UPDATE web_users SET password_hash = ?, totp_secret = ?, totp_last_step = ?,"
                       " failed_count = 0, failed_since = NULL, locked_until = NULL, updated_at = ?"
                       " WHERE id = ?", (pw, hasher.seal_totp(uid, row["pending_totp"]), step, now, uid))
    return get_user(db, uid)


def set_role(db, user_id, role):
    _check_role(role)
    with db.transaction():
        user = get_user(db, user_id)
        if not user:
            raise AccountError("no such user")
        if user["role"] == "administrator" and role != "administrator" and _last_admin(db, user_id):
            raise AccountError("the last administrator cannot be demoted")
        db.execute("UPDATE web_users SET role = ?, updated_at = ? WHERE id = ?", (role, _now(), user_id))
        drop_sessions(db, user_id)     # the new role takes effect at the next login
    return {"user_id": user_id, "role": role}


def _last_admin(db, user_id):
    others = db.one("SELECT COUNT(*) AS n FROM web_users WHERE role = 'administrator' AND disabled = 0"
                    " AND password_hash IS NOT NULL AND id <> ?", (user_id,))
    return others["n"] == 0


def set_disabled(db, user_id, disabled):
    with db.transaction():
        user = get_user(db, user_id)
        if not user:
            raise AccountError("no such user")
        if disabled and user["role"] == "administrator" and _last_admin(db, user_id):
            raise AccountError("the last administrator cannot be disabled")
        db.execute("UPDATE web_users SET disabled = ?, updated_at = ? WHERE id = ?",
                   (1 if disabled else 0, _now(), user_id))
        if disabled:
            drop_sessions(db, user_id)
            db.execute("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                       (_now(), user_id))
    return {"user_id": user_id, "disabled": bool(disabled)}


def unlock(db, user_id):
    n = db.execute("UPDATE web_users SET failed_count = 0, failed_since = NULL, locked_until = NULL,"
                   " updated_at = ? WHERE id = ?", (_now(), user_id))
    if n != 1:
        raise AccountError("no such user")
    return {"user_id": user_id, "unlocked": True}


def drop_sessions(db, user_id, keep=None):
    db.execute("DELETE FROM web_sessions WHERE user_id = ? AND id_hash <> ?", (user_id, keep or ""))


def change_password(db, hasher, config, user, current, code, new):
    """Own password change: current password and a fresh TOTP code, checked
    as a sign-in is (the code is used up, failures count toward the lock)."""
    problem = password_problem(new, user["username"])
    if problem:
        raise AccountError(problem)
    if authenticate(db, hasher, config, user["username"], current, code).user is None:
        raise AccountError("the current password or the code is wrong")
    db.execute("UPDATE web_users SET password_hash = ?, updated_at = ? WHERE id = ?",
               (hasher.hash(new), _now(), user["id"]))


# ---------------------------------------------------------------- login

class Outcome:
    """What `authenticate` found; only `.user` (None on failure) reaches the
    browser, the rest goes to the audit trail."""

    def __init__(self, user, reason, locked_now=False):
        self.user, self.reason, self.locked_now = user, reason, locked_now
        self.throttled_now = False


def authenticate(db, hasher, config, username, password, code, now=None, source=None):
    """Check user name + password + TOTP code together (one form, one
    answer). Returns an Outcome; reason is one of ok, unknown, bad_password,
    bad_code, locked, disabled, not_enrolled, throttled (`source`, the
    client's address, failed too often across accounts: refused even with
    the right credentials until its block ends)."""
    cfg = dict(DEFAULTS, **(config or {}))
    now = _now() if now is None else now
    out = _authenticate(db, hasher, cfg, username, password, code, now, source)
    if source is not None and out.user is None and out.reason != "throttled":
        out.throttled_now = _count_source_failure(db, cfg, source, now)
    return out


def _source_blocked(db, source, now):
    row = db.one("SELECT blocked_until FROM web_login_sources WHERE source = ?", (source,))
    return bool(row and row["blocked_until"] and row["blocked_until"] > now)


def _count_source_failure(db, cfg, source, now):
    """Count a failed sign-in from `source`; True when this one blocked it.
    Rows whose window and block have both passed are dropped on the way."""
    window = float(cfg["source_window"])
    with db.transaction():
        db.execute("DELETE FROM web_login_sources WHERE failed_since < ? AND"
                   " (blocked_until IS NULL OR blocked_until < ?)", (now - window, now))
        row = db.one("SELECT * FROM web_login_sources WHERE source = ?", (source,))
        if row is None:
            db.execute("INSERT INTO web_login_sources (source, failed_count, failed_since) VALUES (?, 1, ?)",
                       (source, now))
            count = 1
        else:
            count = row["failed_count"] + 1 if now - row["failed_since"] <= window else 1
            db.execute("UPDATE web_login_sources SET failed_count = ?, failed_since = ? WHERE source = ?",
                       (count, row["failed_since"] if count > 1 else now, source))
        blocked = count == int(cfg["source_threshold"])
        if blocked:
            db.execute("UPDATE web_login_sources SET blocked_until = ? WHERE source = ?",
                       (now + float(cfg["source_block"]), source))
    return blocked


def _authenticate(db, hasher, cfg, username, password, code, now, source):
    username = username if isinstance(username, str) and len(username) <= USERNAME_MAX else ""
    password = password if isinstance(password, str) and len(password) <= PASSWORD_MAX else ""
    user = db.one("SELECT * FROM web_users WHERE username = ?", (username,)) if username else None
    # Always one argon2 verification and one TOTP check, whatever the case.
    pw_ok = hasher.verify(user["password_hash"] if user else None, password)
    secret = hasher.open_totp(user["id"], user["totp_secret"]) if user else _DUMMY_TOTP
    step = totp_step(secret, code if isinstance(code, str) else "", user["totp_last_step"] if user else 0, now)
    if source is not None and _source_blocked(db, source, now):
        return Outcome(None, "throttled")
    if user is None:
        return Outcome(None, "unknown")
    if user["disabled"]:
        return Outcome(None, "disabled")
    if user["password_hash"] is None:
        return Outcome(None, "not_enrolled")
    if user["locked_until"] and user["locked_until"] > now:
        return Outcome(None, "locked")
    if pw_ok and step is not None:
        # the step is consumed atomically: two logins racing with one code, one wins
        n = db.execute("UPDATE web_users SET totp_last_step = ?, failed_count = 0, failed_since = NULL,"
                       " locked_until = NULL WHERE id = ? AND totp_last_step < ?", (step, user["id"], step))
        if n == 1:
            if not user["totp_secret"].startswith(SEALED):
                db.execute("UPDATE web_users SET totp_secret = ? WHERE id = ?",
                           (hasher.seal_totp(user["id"], secret), user["id"]))
            return Outcome(get_user(db, user["id"]), "ok")
    reason = "bad_password" if not pw_ok else "bad_code"
    return Outcome(None, reason, _count_failure(db, cfg, user, now))


_DUMMY_TOTP = pyotp.random_base32(32)


def _count_failure(db, cfg, user, now):
    """Count a failure; lock when the threshold is reached inside the window.
    Returns True when this failure locked the account."""
    with db.transaction():
        u = get_user(db, user["id"])
        since = u["failed_since"]
        if since is None or now - since > cfg["lockout_window"]:
            count, since = 1, now
        else:
            count = u["failed_count"] + 1
        locked = count >= int(cfg["lockout_threshold"])
        db.execute("UPDATE web_users SET failed_count = ?, failed_since = ?, locked_until = ? WHERE id = ?",
                   (0 if locked else count, None if locked else since,
                    now + cfg["lockout_duration"] if locked else u["locked_until"], u["id"]))
    return locked


def verify_reauth(db, hasher, config, user, password, code):
    """Re-authentication (password + a fresh TOTP code) of a signed-in user;
    failures count toward the lockout like login failures."""
    return authenticate(db, hasher, config, user["username"], password, code)
