"""Browser sessions kept in the database (the web tier holds no state).

The cookie is `__Host-ictl_session`: Secure, HttpOnly, SameSite=Strict,
Path=/ and no Domain (the __Host- prefix makes browsers enforce the last
three). Its value is 256 random bits; the table keeps only its SHA-256, so a
copy of the database does not hand out live sessions. A new id is issued at
login (an anonymous session's id is never promoted: session fixation), the
old row deleted. Sessions end after `session_idle` seconds without a request
and `session_absolute` seconds after login, whichever comes first.

Every session, anonymous ones too (the login form), carries a CSRF token
(synchroniser pattern): every state-changing request must send it back as
the form field `csrf_token` or the header `X-CSRF-Token`.
"""
import hashlib
import hmac
import secrets
import time

COOKIE = "__Host-ictl_session"
DEFAULTS = {
    "session_idle": 900.0,          # 15 minutes
    "session_absolute": 8 * 3600.0,
    "anonymous_idle": 1800.0,
    "reauth_window": 300.0,         # a re-authentication counts for 5 minutes
}


def _digest(sid):
    return hashlib.sha256(sid.encode()).hexdigest()


class Session:
    def __init__(self, sid, row):
        self.sid = sid
        self.row = row

    @property
    def user_id(self):
        return self.row["user_id"]

    @property
    def csrf(self):
        return self.row["csrf"]

    def reauth_fresh(self, config, now=None):
        now = time.time() if now is None else now
        at = self.row.get("reauth_at")
        return at is not None and now - at <= config["reauth_window"]


def create(db, user_id, source, now=None):
    now = time.time() if now is None else now
    sid = secrets.token_urlsafe(32)
    row = {"id_hash": _digest(sid), "user_id": user_id, "csrf": secrets.token_urlsafe(32),
           "created_at": now, "last_seen": now, "reauth_at": None, "source": str(source)[:64]}
    db.execute("INSERT INTO web_sessions (id_hash, user_id, csrf, created_at, last_seen, reauth_at, source)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(row.values()))
    return Session(sid, row)


def load(db, sid, config, now=None):
    """The live session for cookie value `sid`, or None (expired ones are
    deleted). Touches last_seen."""
    if not sid or len(sid) > 128:
        return None
    now = time.time() if now is None else now
    row = db.one("SELECT * FROM web_sessions WHERE id_hash = ?", (_digest(sid),))
    if row is None:
        return None
    idle = config["session_idle"] if row["user_id"] else config["anonymous_idle"]
    if now - row["last_seen"] > idle or (row["user_id"] and now - row["created_at"] > config["session_absolute"]):
        db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (row["id_hash"],))
        return None
    if now - row["last_seen"] > min(5.0, idle / 8):   # not a write per request of a page's burst
        db.execute("UPDATE web_sessions SET last_seen = ? WHERE id_hash = ?", (now, row["id_hash"]))
        row["last_seen"] = now
    return Session(sid, row)


def destroy(db, session):
    if session is not None:
        db.execute("DELETE FROM web_sessions WHERE id_hash = ?", (session.row["id_hash"],))


def rotate(db, old, user_id, source):
    """Login: a brand-new session for `user_id`; the old one is deleted."""
    destroy(db, old)
    return create(db, user_id, source)


def mark_reauth(db, session, now=None):
    now = time.time() if now is None else now
    db.execute("UPDATE web_sessions SET reauth_at = ? WHERE id_hash = ?", (now, session.row["id_hash"]))
    session.row["reauth_at"] = now


def csrf_ok(session, token):
    return session is not None and isinstance(token, str) and hmac.compare_digest(session.csrf, token)


def purge(db, config, now=None):
    """Delete expired sessions (called now and then by the server)."""
    now = time.time() if now is None else now
    db.execute("DELETE FROM web_sessions WHERE (user_id IS NULL AND last_seen < ?)"
               " OR (user_id IS NOT NULL AND (last_seen < ? OR created_at < ?))",
               (now - config["anonymous_idle"], now - config["session_idle"], now - config["session_absolute"]))
