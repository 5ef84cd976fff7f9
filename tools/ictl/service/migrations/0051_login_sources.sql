-- WEB: failed sign-ins counted per source address as well as per account, so
-- one address trying one password on many accounts (password spraying) is
-- throttled although no single account reaches its lockout.
CREATE TABLE web_login_sources (
    source TEXT PRIMARY KEY,
    failed_count INTEGER NOT NULL DEFAULT 0,
    failed_since DOUBLE PRECISION NOT NULL,
    blocked_until DOUBLE PRECISION
);
CREATE INDEX web_login_sources_since ON web_login_sources (failed_since);
