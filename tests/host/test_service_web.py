"""WEB (issue 16): the console's HTTPS server, accounts, sessions, CSRF,
roles, re-authentication, API tokens and the audit trail, through real HTTPS
requests (requests) against the real server (cheroot + TLS, SQLite file).

Accounts here use argon2id with a small cost, except where the timing of the
login answer is measured; TOTP codes come from pyotp with the secret the
enrolment page shows."""
import base64
import re
import statistics
import time

import pyotp
import pytest
import requests

from ictl.service import audit
from ictl.service import db as dbmod
from ictl.service.web import accounts, app as webapp, permissions, sessions, tokens
from ictl.service.web.testrig import FAST, PASSWORD, Rig, csrf_of
from pg import pg_server, pg_url  # noqa: F401  (fixtures)

CSP = ("default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("web"))
    r.admin = r.enrol(accounts.init_setup_token(r.db))
    for role in permissions.ROLES:
        r.user("u-" + role, role)
    yield r
    r.stop()


def _actions(rig):
    return [e["action"] for e in audit.entries(rig.db, limit=1000)]


# ---------------------------------------------------------------- unit level

def test_totp_rfc6238_vector_and_replay():
    # RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (8 digits) -> 287082 in 6
    secret = base64.b32encode(b"12345678901234567890").decode()
    assert pyotp.TOTP(secret, digits=8).at(59) == "94287082"
    assert accounts.totp_step(secret, "287082", 0, now=59) == 1
    assert accounts.totp_step(secret, "287082", 1, now=59) is None      # replay of the same step
    assert accounts.totp_step(secret, "287083", 0, now=59) is None
    assert accounts.totp_step(secret, "287082", 0, now=59 + 3 * 30) is None  # outside the window


def test_password_policy():
    assert accounts.password_problem("short1") is not None
    assert "common" in accounts.password_problem("password12345")
    assert "common" in accounts.password_problem("iloveyou1234")
    assert accounts.password_problem("aaaaaaaaaaaaaa") is not None
    assert accounts.password_problem(PASSWORD, "bob") is None
    assert accounts.password_problem("x" * 300) is not None


def test_no_default_account_and_single_use_setup(tmp_path):
    db = dbmod.connect(str(tmp_path / "s.db"))
    db.migrate()
    assert db.query("SELECT * FROM web_users") == []
    token = accounts.init_setup_token(db)
    h = accounts.Hasher(FAST)
    secret = accounts.onetime(db, h, token, ("setup",))["pending_totp"]
    accounts.redeem(db, h, token, ("setup",), "first", PASSWORD, pyotp.TOTP(secret).now())
    with pytest.raises(accounts.AccountError):
        accounts.redeem(db, h, token, ("setup",), "second", PASSWORD, pyotp.TOTP(secret).now())
    with pytest.raises(accounts.AccountError):
        accounts.init_setup_token(db)
    assert [u["username"] for u in accounts.list_users(db)] == ["first"]
    db.close()


# ---------------------------------------------------------------- over HTTPS

def test_login_totp_headers_cookie_rotation(rig):
    s = rig.session()
    r = s.get(rig.url + "/login")
    assert r.headers["Content-Security-Policy"] == CSP
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    assert "<script" not in r.text and " style=" not in r.text
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(sessions.COOKIE + "=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie, cookie
    before = s.cookies[sessions.COOKIE]
    # a wrong code with the right password fails
    _, r = rig.login("u-viewer", code="000000", s=s)
    assert r.status_code == 401
    _, r = rig.login("u-viewer", s=s)
    assert r.status_code == 302
    after = s.cookies[sessions.COOKIE]
    assert after != before                        # rotated at login: no fixation
    old = rig.session()
    old.cookies.set(sessions.COOKIE, before, domain="127.0.0.1", path="/")
    assert old.get(rig.url + "/account", allow_redirects=False).status_code == 302
    assert "u-viewer (viewer)" in s.get(rig.url + "/account").text
    # HTTPS only: plain HTTP on the port gets no page
    with pytest.raises(requests.exceptions.RequestException):
        r = requests.get(rig.url.replace("https://", "http://") + "/login", timeout=5)
        assert "Sign in" not in r.text
        raise requests.exceptions.RequestException("answered without the page")


def test_same_answer_unknown_wrong_locked(tmp_path):
    # argon2id at a cost that dominates the request, so a skipped hash shows
    cfg = {"argon2_time_cost": 2, "argon2_memory_kib": 32768, "argon2_parallelism": 1,
           "lockout_duration": 4.0, "pages": False}
    rig = Rig(tmp_path, cfg)
    try:
        rig.user("victim", "operator")
        s = rig.session()
        page = s.get(rig.url + "/login").text
        token = csrf_of(page)

        def attempt(username, password, code="123456"):
            t = time.perf_counter()
            r = s.post(rig.url + "/login", data={"csrf_token": token, "username": username,
                                                 "password": password, "code": code})
            return r, time.perf_counter() - t

        wrong = [attempt("victim", "not-the-password-%d" % i) for i in range(5)]
        assert "auth.lockout" in _actions(rig)
        locked, unknown = [], []
        for i in range(5):               # interleaved: load on the machine hits both alike
            locked.append(attempt("victim", PASSWORD, rig.code("victim")))
            unknown.append(attempt("nobody-%d" % i, PASSWORD))
        bodies = {(r.status_code, r.text) for r, _ in wrong + locked + unknown}
        assert len(bodies) == 1, "answers differ"
        assert next(iter(bodies))[0] == 401
        times = {k: statistics.median(t for _, t in v) for k, v in
                 (("wrong", wrong), ("locked", locked), ("unknown", unknown))}
        lo, hi = min(times.values()), max(times.values())
        # a skipped argon2 run would make one of them ~30x faster
        assert hi / lo < 2.5, times
        # the lock is time-based: after it, the right credentials work again
        time.sleep(4.2)
        _, r = rig.login("victim")
        assert r.status_code == 302
        res = [e["result"].get("reason") for e in audit.entries(rig.db, limit=100) if e["action"] == "auth.login"]
        assert {"unknown", "bad_password", "locked"} <= set(res)
    finally:
        rig.stop()


def test_one_address_spraying_many_accounts_is_throttled(tmp_path):
    # One wrong password for each of many accounts: no account reaches its
    # lockout, but the address does; then even the right credentials get the
    # same failure answer until the block ends, and the block is audited.
    cfg = dict(FAST, source_threshold=6, source_block=3.0, pages=False)
    rig = Rig(tmp_path, cfg)
    try:
        rig.user("victim", "operator")
        s = rig.session()
        token = csrf_of(s.get(rig.url + "/login").text)

        def attempt(username, password, code="123456"):
            return s.post(rig.url + "/login", data={"csrf_token": token, "username": username,
                                                    "password": password, "code": code}, allow_redirects=False)

        answers = {(r.status_code, r.text) for r in
                   [attempt("victim", "sprayed-password-1")] + [attempt("user-%d" % i, "sprayed-password-1")
                                                                for i in range(5)]}
        assert "auth.throttle" in _actions(rig)
        assert not rig.db.one("SELECT locked_until FROM web_users WHERE username = 'victim'")["locked_until"]
        r = attempt("victim", PASSWORD, rig.code("victim"))
        answers.add((r.status_code, r.text))
        assert len(answers) == 1 and r.status_code == 401  # one answer: nothing tells a block apart
        res = [e["result"].get("reason") for e in audit.entries(rig.db, limit=50) if e["action"] == "auth.login"]
        assert "throttled" in res
        time.sleep(3.2)  # time-based: after the block the right credentials work
        _, r = rig.login("victim", s=s)
        assert r.status_code == 302
    finally:
        rig.stop()


def test_totp_secrets_are_sealed_at_rest_under_a_key_outside_the_database(tmp_path):
    import os
    import stat

    rig = Rig(tmp_path, dict(FAST, pages=False))
    try:
        rig.user("ann", "operator")
        rig.user("bob", "operator")
        rows = {r["username"]: r for r in rig.db.query("SELECT * FROM web_users")}
        for name in ("ann", "bob"):
            stored = rows[name]["totp_secret"]
            assert stored.startswith(accounts.SEALED) and rig.secrets[name] not in stored
        dump = "\n".join(str(r) for t in ("web_users", "web_onetime") for r in rig.db.query("SELECT * FROM " + t))
        assert not [n for n, v in rig.secrets.items() if v in dump]  # no secret, pending or enrolled, in the tables
        key = os.path.join(rig.pki_dir, accounts.TOTP_KEY_FILE)
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and os.path.getsize(key) == 32
        assert rig.login("ann")[1].status_code == 302
        # Ann's sealed secret copied into Bob's row does not open there:
        # her codes do not sign Bob in.
        rig.db.execute("UPDATE web_users SET totp_secret = ? WHERE username = 'bob'", (rows["ann"]["totp_secret"],))
        assert rig.login("bob", code=rig.code("ann"))[1].status_code == 401
        assert rig.login("bob")[1].status_code == 401
        # A secret stored in clear by an earlier release still signs in, and
        # is sealed by that sign-in.
        rig.db.execute("UPDATE web_users SET totp_secret = ? WHERE username = 'bob'", (rig.secrets["bob"],))
        assert rig.login("bob")[1].status_code == 302
        assert rig.db.one("SELECT totp_secret FROM web_users WHERE username = 'bob'")["totp_secret"].startswith(
            accounts.SEALED)
    finally:
        rig.stop()
    # Another start of the server (same key file) opens them; a server with
    # another key does not.
    known = dict(rig.secrets)
    again = Rig(tmp_path, dict(FAST, pages=False))
    try:
        again.secrets = known
        assert again.login("ann")[1].status_code == 302
    finally:
        again.stop()
    other = Rig(tmp_path, dict(FAST, pages=False, totp_key_file=str(tmp_path / "other.key")))
    try:
        other.secrets = known
        assert other.login("ann")[1].status_code == 401
    finally:
        other.stop()


def test_csrf_and_cross_origin_refused_and_audited(rig):
    s = rig.signed_in("u-operator")
    tid, _ = tokens.create(rig.db, accounts.get_user(rig.db, rig.db.one(
        "SELECT id FROM web_users WHERE username = 'u-operator'")["id"]), "t", ["fleet.view"], 600, False)
    n = len(_actions(rig))
    r = s.post(rig.url + "/account/tokens/%s/revoke" % tid, data={}, allow_redirects=False)
    assert r.status_code == 403
    r = s.post(rig.url + "/account/tokens/%s/revoke" % tid, data={"csrf_token": "forged"}, allow_redirects=False)
    assert r.status_code == 403
    token = csrf_of(s.get(rig.url + "/account").text)
    r = s.post(rig.url + "/account/tokens/%s/revoke" % tid, data={"csrf_token": token},
               headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert r.status_code == 403
    assert rig.db.one("SELECT revoked_at FROM api_tokens WHERE id = ?", (tid,))["revoked_at"] is None
    new = audit.entries(rig.db, limit=len(_actions(rig)) - n)
    assert [e["action"] for e in new] == ["refused:token.revoke"] * 3
    n = len(_actions(rig))
    assert all("csrf_token" not in e["params"] for e in new)
    r = s.post(rig.url + "/account/tokens/%s/revoke" % tid, data={"csrf_token": token},
               headers={"Origin": "null", "Referer": "https://evil.example/x"}, allow_redirects=False)
    assert r.status_code == 403          # an opaque Origin is judged by its Referer
    # what Chromium sends under Referrer-Policy no-referrer: Origin null, no Referer
    r = s.post(rig.url + "/account/tokens/%s/revoke" % tid, data={"csrf_token": token},
               headers={"Origin": "null"}, allow_redirects=False)
    assert r.status_code == 302
    assert rig.db.one("SELECT revoked_at FROM api_tokens WHERE id = ?", (tid,))["revoked_at"] is not None


def _sample(path):
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: "1" if m.group(1).endswith("id") and "device" not in
                  m.group(1) else "x", path)


def test_every_route_against_the_matrix(rig):
    """Walk the route table: each role gets 403 exactly where the matrix
    says it lacks the route's permission (pages and API alike)."""
    routes = webapp.routes()
    assert routes
    for role in permissions.ROLES:
        s = rig.signed_in("u-" + role)
        user = rig.db.one("SELECT * FROM web_users WHERE username = ?", ("u-" + role,))
        _, bearer = tokens.create(rig.db, user, "walk", permissions.permissions_of(role), 600,
                                  reauthed=True, config={"sensitive_token_ttl": 600})
        for rt in routes:
            allowed = permissions.allowed(role, rt.permission)
            for method in rt.methods:
                url = rig.url + _sample(rt.path)
                if rt.api:
                    r = s.request(method, url, headers={"Authorization": "Bearer " + bearer})
                    assert (r.status_code == 403) == (not allowed), (role, method, rt.path, r.status_code)
                    continue
                if method == "GET":
                    r = s.get(url, allow_redirects=False)
                    assert (r.status_code == 403) != allowed, (role, method, rt.path, r.status_code)
                    continue
                # a state change without its CSRF token: the role check comes
                # first, so the refusal says which check stopped it
                r = s.post(url, data={}, allow_redirects=False)
                assert r.status_code in (401, 403), (role, rt.path, r.status_code)
                role_refused = "Your role does not allow this." in r.text
                assert role_refused == (not allowed and rt.permission != permissions.PUBLIC), (role, rt.path)


def test_reauth_for_sensitive_actions(rig):
    s = rig.signed_in("u-administrator")
    data = {"name": "ci", "ttl": "600", "scope": ["users.manage", "fleet.view"]}
    r = rig.form(s, "/account/tokens", data)
    assert r.status_code == 401 and "re-authenticate" in r.text.lower()
    r = rig.form(s, "/account/tokens", dict(data, reauth_password="wrong-wrong-wrong", reauth_code="000000"))
    assert r.status_code == 401
    r = rig.form(s, "/account/tokens", dict(data, **rig.reauth("u-administrator")))
    assert r.status_code == 200, r.text
    assert re.search(r'id="new-token">ictl_', r.text)
    # a sensitive scope lives at most an hour; without re-authentication none
    user = rig.db.one("SELECT * FROM web_users WHERE username = 'u-administrator'")
    with pytest.raises(tokens.TokenError):
        tokens.create(rig.db, user, "long", ["users.manage"], 7200, True)
    with pytest.raises(tokens.TokenError):
        tokens.create(rig.db, user, "noauth", ["device.wipe"], 600, False)
    acts = _actions(rig)
    assert "refused:token.create" in acts and "token.create" in acts


def test_no_action_without_its_write_ahead_audit_record(rig, monkeypatch):
    # A state change is recorded as begun before it is done: when that
    # record cannot be written the request is refused (503) and nothing is
    # done; when the outcome record is lost after the action, the begun one
    # is in the trail. So no action, even one whose effect leaves the
    # database (a published wipe), can be unaudited.
    s = rig.signed_in("u-administrator")
    data = {"name": "wal", "ttl": "600", "scope": ["fleet.view"]}
    tokens_now = lambda: rig.db.one("SELECT COUNT(*) AS n FROM api_tokens")["n"]  # noqa: E731
    n = tokens_now()
    anchor = rig.db.one("SELECT * FROM audit_anchor WHERE id = 1")
    rig.db.execute("DELETE FROM audit_anchor")        # the trail cannot be appended to
    try:
        r = rig.form(s, "/account/tokens", dict(data, **rig.reauth("u-administrator")))
        assert r.status_code == 503 and "nothing was done" in r.text
        assert tokens_now() == n
        h = {"Authorization": "Bearer " + tokens.create(rig.db, rig.db.one(
            "SELECT * FROM web_users WHERE username = 'u-administrator'"), "w", ["device.command"], 600, True)[1]}
        r = rig.session().post(rig.url + "/api/v1/devices/dev-x/commands", headers=h,
                                 json={"op": "interval", "args": {"s": 10}})
        assert r.status_code == 503 and "nothing was done" in r.json()["error"]
    finally:
        rig.db.execute("INSERT INTO audit_anchor (id, start_seq, start_hash, head_seq, head_hash) VALUES (1, ?, ?, ?, ?)",
                       (anchor["start_seq"], anchor["start_hash"], anchor["head_seq"], anchor["head_hash"]))
    n = tokens_now()
    r = rig.form(s, "/account/tokens", dict(data, **rig.reauth("u-administrator")))
    assert r.status_code == 200 and tokens_now() == n + 1
    done, begun = audit.entries(rig.db, 2)
    assert begun["action"] == "begin:token.create" and done["action"] == "token.create"
    assert done["result"]["begin"] == begun["seq"] and begun["who"] == done["who"] == "u-administrator"
    # the outcome record lost after the action: the begun one tells of it
    real = audit.record

    def outcome_lost(db, who, source, action, *a, **kw):
        if not action.startswith(("begin:", "refused:")):
            raise audit.AuditError("disk full")
        return real(db, who, source, action, *a, **kw)

    monkeypatch.setattr(audit, "record", outcome_lost)
    r = rig.form(s, "/account/tokens", dict(data, name="lost", **rig.reauth("u-administrator")))
    monkeypatch.undo()
    assert r.status_code == 500 and tokens_now() == n + 2
    last = audit.entries(rig.db, 1)[0]
    assert last["action"] == "begin:token.create" and last["params"]["name"] == "lost"
    assert audit.verify(rig.db)["ok"]


def test_session_idle_and_absolute_timeouts(tmp_path):
    rig = Rig(tmp_path, {"session_idle": 1.5, "session_absolute": 4.0, "pages": False})
    try:
        rig.user("sam", "viewer")
        s = rig.signed_in("sam")
        assert s.get(rig.url + "/account", allow_redirects=False).status_code == 200
        time.sleep(2.0)
        assert s.get(rig.url + "/account", allow_redirects=False).status_code == 302   # idle
        s = rig.signed_in("sam")
        t0 = time.time()
        while time.time() - t0 < 3.5:
            assert s.get(rig.url + "/account", allow_redirects=False).status_code == 200
            time.sleep(0.5)
        time.sleep(max(0.0, 4.2 - (time.time() - t0)))
        assert s.get(rig.url + "/account", allow_redirects=False).status_code == 302   # absolute
    finally:
        rig.stop()


def test_api_token_scopes_and_expiry(rig):
    op = rig.db.one("SELECT * FROM web_users WHERE username = 'u-operator'")
    tid, tok = tokens.create(rig.db, op, "ro", ["fleet.view"], 600, False)
    h = {"Authorization": "Bearer " + tok}
    s = rig.session()
    r = s.get(rig.url + "/api/v1/whoami", headers=h)
    assert r.status_code == 200 and r.json()["scopes"] == ["fleet.view"]
    assert s.get(rig.url + "/api/v1/audit", headers=h).status_code == 403    # not the operator's
    assert s.get(rig.url + "/api/v1/whoami").status_code == 401
    assert s.get(rig.url + "/api/v1/whoami", headers={"Authorization": "Bearer ictl_forged"}).status_code == 401
    with pytest.raises(tokens.TokenError):                                  # beyond the role
        tokens.create(rig.db, op, "esc", ["audit.view"], 600, True)
    # a browser session is no API credential
    sess = rig.signed_in("u-administrator")
    assert sess.get(rig.url + "/api/v1/audit").status_code == 401
    adm = rig.db.one("SELECT * FROM web_users WHERE username = 'u-administrator'")
    _, atok = tokens.create(rig.db, adm, "audit", ["audit.view"], 600, False)
    r = s.get(rig.url + "/api/v1/audit/verify", headers={"Authorization": "Bearer " + atok})
    assert r.status_code == 200 and r.json()["ok"] is True
    # expiry
    rig.db.execute("UPDATE api_tokens SET expires_at = ? WHERE id = ?", (time.time() - 1, tid))
    assert s.get(rig.url + "/api/v1/whoami", headers=h).status_code == 401
    # demotion narrows a token at once
    accounts.set_role(rig.db, adm["id"], "viewer")
    try:
        assert s.get(rig.url + "/api/v1/audit", headers={"Authorization": "Bearer " + atok}).status_code == 403
    finally:
        accounts.set_role(rig.db, adm["id"], "administrator")


def test_audit_chain_detects_tampering(tmp_path):
    db = dbmod.connect(str(tmp_path / "a.db"))
    db.migrate()
    for i in range(8):
        audit.record(db, "op%d" % i, "127.0.0.1", "device.wipe", {"device": "d%d" % i, "password": "x"}, {"ok": True})
    assert audit.verify(db)["ok"]
    assert audit.entries(db, 1)[0]["params"]["password"] == audit.REDACTED
    import io
    buf = io.StringIO()
    assert audit.export_jsonl(db, buf) == 8
    assert audit.verify_jsonl(buf.getvalue().splitlines()) == []

    def tampered(sql, params=()):
        with db.transaction():
            db.execute("SAVEPOINT t")
            db.execute(sql, params)
            res = audit.verify(db)
            db.execute("ROLLBACK TO SAVEPOINT t")
        return not res["ok"]

    assert tampered("UPDATE audit_log SET who = 'someone-else' WHERE seq = 3")
    assert tampered("UPDATE audit_log SET params = '{}' WHERE seq = 5")
    assert tampered("DELETE FROM audit_log WHERE seq = 4")
    assert tampered("DELETE FROM audit_log WHERE seq = 8")       # the newest: the anchor's head
    assert tampered("DELETE FROM audit_log WHERE seq = 1")       # the oldest: the anchor's start
    row = db.one("SELECT * FROM audit_log WHERE seq = 6")
    rec = dict(row, who="rewritten")
    assert tampered("UPDATE audit_log SET who = ?, hash = ? WHERE seq = 6", ("rewritten", audit.chain_hash(row["prev_hash"], rec)))
    lines = buf.getvalue().splitlines()
    assert audit.verify_jsonl(lines[:3] + lines[4:])
    assert audit.verify_jsonl([lines[0].replace("op0", "op9")] + lines[1:])
    # retention keeps the rest verifiable
    cut = db.one("SELECT at FROM audit_log WHERE seq = 4")["at"]
    assert audit.prune(db, cut) == 3
    assert audit.verify(db)["ok"] and audit.verify(db)["count"] == 5
    db.close()


def test_audit_cli_verify(tmp_path):
    from ictl.cli import main as cli
    url = str(tmp_path / "c.db")
    db = dbmod.connect(url)
    db.migrate()
    audit.record(db, "a", "127.0.0.1", "x", {}, {})
    audit.record(db, "b", "127.0.0.1", "y", {}, {})
    assert cli.main(["audit", "verify", "--db", url]) == 0
    out = str(tmp_path / "a.jsonl")
    assert cli.main(["audit", "export", "--db", url, "--out", out]) == 0
    assert cli.main(["audit", "verify", "--jsonl", out]) == 0
    db.execute("UPDATE audit_log SET action = 'z' WHERE seq = 1")
    assert cli.main(["audit", "verify", "--db", url]) == 1
    db.close()


def test_soak_slice_attacks_refused_and_tampering_detected(tmp_path):
    """A slice of `ictl soak --only web` (tools/ictl/soak_web.py)."""
    from ictl.measure import soak_web
    t = soak_web.attack(tmp_path / "a", scale=0.2, fast_hash=True)
    assert t.accepted == []
    assert t.cases >= 300 and all(t.by_kind.get(k) for k in ("xss_device", "xss_form", "sqli", "csrf", "fixation",
                                                               "escalation", "brute_force", "enumeration"))
    frac, by_kind = soak_web.tamper_trials(tmp_path, 30)
    assert frac == 1.0 and len(by_kind) == len(soak_web.TAMPERS)


def test_bench_slice_overview_figure(tmp_path):
    """`ictl bench --only web` end to end on a small store (the figure is
    measured with 1,000,000 readings by `make bench`)."""
    import argparse
    from ictl.measure import bench_web
    from ictl.measure.figures import Figures
    fig = Figures(str(tmp_path / "bench.json"))
    assert bench_web.run(fig, str(tmp_path), argparse.Namespace(web_readings=5000)) == 0
    v = fig.data["overview_p95_ratio"]
    assert v["value"] > 0 and "5000 readings" in v["detail"]


def test_docs_carry_the_matrix():
    import os
    from ictl import ROOT
    with open(os.path.join(ROOT, "docs", "console.md"), encoding="utf-8") as f:
        assert permissions.markdown_table() in f.read()


def test_audit_chain_and_login_on_postgresql(pg_url):
    """The same code on PostgreSQL: concurrent writers keep one gap-free
    chain (the anchor's compare-and-swap), tampering is found, a login
    checks, and the web tier serves from it."""
    import threading
    db = dbmod.connect(pg_url)
    db.migrate()

    def writer(n):
        w = dbmod.connect(pg_url)
        for i in range(15):
            audit.record(w, "w%d" % n, "127.0.0.1", "x", {"i": i}, {})
        w.close()

    ts = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    res = audit.verify(db)
    assert res["ok"] and res["count"] == 45, res
    db.execute("UPDATE audit_log SET who = 'x' WHERE seq = 7")
    assert not audit.verify(db)["ok"]
    h = accounts.Hasher(FAST)
    token = accounts.init_setup_token(db)
    secret = accounts.onetime(db, h, token, ("setup",))["pending_totp"]
    accounts.redeem(db, h, token, ("setup",), "pg-admin", PASSWORD, pyotp.TOTP(secret).at(time.time() - 30))
    out = accounts.authenticate(db, h, None, "pg-admin", PASSWORD, pyotp.TOTP(secret).now())
    assert out.user is not None and out.user["role"] == "administrator"
    assert accounts.authenticate(db, h, None, "pg-admin", PASSWORD, pyotp.TOTP(secret).now()).user is None  # replay
    db.close()


def test_api_reads_device_data_and_refuses_bad_input(rig):
    import os
    from ictl import fleetkeys, pki
    from ictl.service import ingest, simdev
    ca = pki.load_ca(rig.pki_dir)
    key = fleetkeys.ensure(rig.pki_dir)
    w = ingest.Ingest(rig.db_url, key, os.path.join(rig.pki_dir, pki.CA_CERT))
    dev = simdev.SimDevice(ca, fleetkeys.public_point(key), "api-0001")
    w.process_batch([dev.hello(), dev.reading(temp_c=21.0), dev.reading(temp_c=22.0)])
    op = rig.db.one("SELECT * FROM web_users WHERE username = 'u-operator'")
    tid, tok = tokens.create(rig.db, op, "auto", ["fleet.view", "device.command", "rollout.create"], 600, False)
    s, h = rig.session(), {"Authorization": "Bearer " + tok}
    r = s.get(rig.url + "/api/v1/devices", params={"q": "api-"}, headers=h)
    assert r.status_code == 200 and [d["device_id"] for d in r.json()["devices"]] == ["api-0001"]
    r = s.get(rig.url + "/api/v1/devices/api-0001/readings", headers=h)
    assert [x["body"]["temp_c"] for x in r.json()["readings"]] == [21.0, 22.0]
    assert s.get(rig.url + "/api/v1/devices/no.such", headers=h).status_code == 404
    assert s.get(rig.url + "/api/v1/devices", params={"status": "bogus"}, headers=h).status_code == 400
    n = rig.db.one("SELECT count(*) AS n FROM commands")["n"]
    r = s.post(rig.url + "/api/v1/devices/api-0001/commands", json={"op": "wipe"}, headers=h)
    assert r.status_code == 400 and "op" in r.json()["error"]
    assert rig.db.one("SELECT count(*) AS n FROM commands")["n"] == n
    r = s.post(rig.url + "/api/v1/rollouts", params={"targets": '{"percentage": 50}'}, data=b"not a tar",
               headers=dict(h, **{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 400 and "tar" in r.json()["error"]
    assert rig.db.one("SELECT count(*) AS n FROM rollouts")["n"] == 0
    last = audit.entries(rig.db, 1)[0]
    assert last["action"] == "api.rollout_create" and last["who"] == "u-operator (token %s)" % tid
    assert last["result"]["status"] == 400 and last["params"]["targets"]


def test_request_size_bounds(rig):
    s = rig.session()
    r = s.get(rig.url + "/login", headers={"X-Big": "a" * (80 * 1024)})
    assert r.status_code in (400, 413, 431)
    try:    # cheroot answers 413 and closes while the client is still sending
        r = s.post(rig.url + "/api/v1/rollouts", data=b"x" * (webapp.DEFAULTS["max_upload"] + 128 * 1024),
                   headers={"Content-Type": "application/octet-stream", "Authorization": "Bearer ictl_x"})
        assert r.status_code == 413
    except requests.exceptions.ConnectionError:
        pass
    assert rig.session().get(rig.url + "/healthz").status_code == 200


def test_password_change_needs_a_fresh_code_and_ends_other_sessions(rig):
    rig.user("pat", "viewer")
    s, other = rig.signed_in("pat"), rig.signed_in("pat")
    new = "amber-glacier-orchid-58"
    r = rig.form(s, "/account/password", {"password": PASSWORD, "code": "000000", "new_password": new,
                                           "new_password2": new})
    assert r.status_code == 400
    r = rig.form(s, "/account/password", {"password": PASSWORD, "code": rig.code("pat"), "new_password": "password1234",
                                           "new_password2": "password1234"})
    assert r.status_code == 400 and "common" in r.text
    code = rig.code("pat")
    r = rig.form(s, "/account/password", {"password": PASSWORD, "code": code, "new_password": new, "new_password2": new})
    assert r.status_code == 200 and "Password changed" in r.text
    r = rig.form(s, "/account/password", {"password": new, "code": code, "new_password": PASSWORD,
                                           "new_password2": PASSWORD})
    assert r.status_code == 400                        # the same code again: used up
    assert other.get(rig.url + "/account", allow_redirects=False).status_code == 302
    assert rig.login("pat", password=PASSWORD)[1].status_code == 401
    assert rig.login("pat", password=new)[1].status_code == 302


def test_audit_sees_an_upload_the_handler_consumed(tmp_path):
    import hashlib
    import io
    db = dbmod.connect(str(tmp_path / "u.db"))
    db.migrate()
    app = webapp.create_app(db, dict(FAST, pages=False))
    blob = b"update-archive-bytes" * 100
    with app.test_request_context("/x", method="POST", data={"update": (io.BytesIO(blob), "u.tgz")},
                                  content_type="multipart/form-data"):
        import flask
        req = flask.request._get_current_object()
        assert req.files["update"].stream.read() == blob      # what a handler does
        params = webapp._form_params(req, {})
    assert params["update"] == {"filename": "u.tgz", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    db.close()
