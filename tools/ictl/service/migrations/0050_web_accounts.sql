-- WEB (issue 16): console accounts, sessions, one-time tokens, API tokens and
-- the hash-chained operator audit trail. Times are Unix seconds.

-- Operators. password_hash is argon2id (PHC string); totp_secret base32. Both
-- stay NULL until the account is enrolled through its one-time link.
CREATE TABLE web_users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT,
    totp_secret TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0,
    failed_since DOUBLE PRECISION,
    locked_until DOUBLE PRECISION,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Single-use, expiring tokens: setup (first administrator), enrol (a new
-- account), reset (password + TOTP again). Only a SHA-256 of the token is kept.
-- pending_totp is the secret shown on the enrolment page until it is confirmed.
CREATE TABLE web_onetime (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id TEXT,
    pending_totp TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION
);

-- Browser sessions (the web tier keeps none in memory). id_hash = SHA-256 of
-- the cookie value; user_id NULL = an anonymous session carrying the login
-- form's CSRF token.
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT,
    csrf TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    reauth_at DOUBLE PRECISION,
    source TEXT NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (user_id);
CREATE INDEX web_sessions_seen ON web_sessions (last_seen);

-- JSON API tokens: scopes = space-separated permissions.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    last_used DOUBLE PRECISION
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- The operator audit trail. hash = SHA-256 over prev_hash and the record's
-- canonical JSON (ictl/service/audit.py); seq has no gaps.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    who TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    params TEXT NOT NULL,
    result TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- One row: where the chain starts (the last record retention pruned) and
-- where it ends (the newest record), so removing records at either end is
-- detected too. head_seq doubles as the writers' compare-and-swap.
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY,
    start_seq BIGINT NOT NULL,
    start_hash TEXT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL
);
INSERT INTO audit_anchor (id, start_seq, start_hash, head_seq, head_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000',
        0, '0000000000000000000000000000000000000000000000000000000000000000');
