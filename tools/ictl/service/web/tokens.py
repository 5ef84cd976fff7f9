"""JSON API tokens: scoped (a subset of the owner's permissions), expiring,
revocable. The token is shown once; the table keeps its SHA-256.

At each call the effective permissions are the token's scopes & the owner's
role now (permissions.permissions_of), so a demoted or disabled user's
tokens shrink or die with them. A scope that needs re-authentication
(permissions.REAUTH: wipe, revoke, rollout start, user changes) can only be
put in a token made right after a password + TOTP check, and such a token
lives at most `sensitive_token_ttl` seconds.
"""
import hashlib
import secrets
import time

from ictl.service.web import permissions

PREFIX = "ictl_"
DEFAULTS = {
    "token_max_ttl": 30 * 86400.0,
    "sensitive_token_ttl": 3600.0,
}


class TokenError(Exception):
    """A refused token request; the message is safe to show."""


def _digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def create(db, user, name, scopes, ttl, reauthed, config=None):
    """A new token for `user` (a web_users row); returns (id, token)."""
    cfg = dict(DEFAULTS, **(config or {}))
    name = (name or "").strip()
    if not 1 <= len(name) <= 64:
        raise TokenError("name the token (1 to 64 characters)")
    scopes = sorted(set(scopes or ()))
    if not scopes:
        raise TokenError("pick at least one scope")
    mine = permissions.permissions_of(user["role"])
    extra = [s for s in scopes if s not in mine]
    if extra:
        raise TokenError("your role does not hold %s" % ", ".join(extra))
    try:
        ttl = float(ttl)
    except (TypeError, ValueError):
        raise TokenError("lifetime: a number of seconds") from None
    if not 60 <= ttl <= cfg["token_max_ttl"]:
        raise TokenError("lifetime: 60 to %d seconds" % cfg["token_max_ttl"])
    if permissions.REAUTH.intersection(scopes):
        if not reauthed:
            raise TokenError("scopes %s need re-authentication" % ", ".join(sorted(permissions.REAUTH.intersection(scopes))))
        if ttl > cfg["sensitive_token_ttl"]:
            raise TokenError("a token with %s lives at most %d seconds"
                             % (", ".join(sorted(permissions.REAUTH.intersection(scopes))), cfg["sensitive_token_ttl"]))
    token = PREFIX + secrets.token_urlsafe(32)
    tid = "t_" + secrets.token_hex(6)
    now = time.time()
    db.execute("INSERT INTO api_tokens (id, token_hash, user_id, name, scopes, created_at, expires_at)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)", (tid, _digest(token), user["id"], name, " ".join(scopes), now, now + ttl))
    return tid, token


def lookup(db, token, now=None):
    """(token row, user row, effective permissions) for a live token, else None."""
    if not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > 128:
        return None
    now = time.time() if now is None else now
    row = db.one("SELECT * FROM api_tokens WHERE token_hash = ?", (_digest(token),))
    if row is None or row["revoked_at"] is not None or row["expires_at"] <= now:
        return None
    user = db.one("SELECT * FROM web_users WHERE id = ?", (row["user_id"],))
    if user is None or user["disabled"] or user["password_hash"] is None:
        return None
    if row["last_used"] is None or now - row["last_used"] > 60:
        db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, row["id"]))
    return row, user, frozenset(row["scopes"].split()) & permissions.permissions_of(user["role"])


def list_for(db, user_id):
    return db.query("SELECT id, name, scopes, created_at, expires_at, revoked_at, last_used FROM api_tokens"
                    " WHERE user_id = ? ORDER BY created_at DESC", (user_id,))


def revoke(db, user_id, token_id):
    n = db.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
                   (time.time(), token_id, user_id))
    if n != 1:
        raise TokenError("no such live token")
    return {"token_id": token_id, "revoked": True}
