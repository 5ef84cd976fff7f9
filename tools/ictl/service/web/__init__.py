"""The fleet console over HTTPS (issue 16, WEB): server (cheroot + TLS), app
(routing, sessions, CSRF, permissions, audit hook, render), accounts (argon2id,
TOTP, lockout, one-time links), tokens (API), permissions (the matrix),
views (sign-in and account pages), api (the JSON API)."""
