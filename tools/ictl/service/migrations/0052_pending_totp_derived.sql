-- WEB: a one-time link's pending TOTP secret is derived from its token and the
-- console's totp_key (accounts.Hasher.pending_totp), no longer stored; clear
-- the ones stored before. Enrolled users' secrets are sealed under the key at
-- their next sign-in (accounts.authenticate).
UPDATE web_onetime SET pending_totp = NULL;
