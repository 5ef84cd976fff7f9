"""Attack campaign against the fleet console (issue 16, WEB), over real HTTPS
against the real server, with argon2id at its production cost:

* xss_device: script/HTML/SVG/template payloads sent as field names, values,
  event kinds/reasons/details and reply reasons by sealed (simulated) devices
  through the ingest path, then every page that shows them is fetched;
* xss_form: the same payloads in every form field and query parameter that
  is echoed back;
* sqli: injection strings in query parameters, path parameters and the login
  form; the answer must not be a 500, a login, or a change in the tables;
* csrf: every state-changing route without a token, with a forged one, with
  another session's token, and with a valid token from a foreign Origin;
* fixation: a planted anonymous session id, forged ids, a signed-out id;
* escalation: viewer and operator sessions and tokens on every route beyond
  their role, tokens asking for more than the role;
* brute_force: common passwords against one account, then the right
  password and code once it is locked;
* spraying: one password on many accounts from one address (the address
  is blocked, audited, and then refuses even the right credentials);
* enumeration: login answers for existing and unknown users, one-time links.

A case is "accepted" when the attack got through: markup unescaped in a
page, a 500, a sign-in, a change that was audited as done, an answer that
tells an existing account from an unknown one. Every state change the
console carries out is audited, so "a non-refused audit record appeared" is
the oracle for CSRF and escalation.

audit_tamper_detected: random alterations of a 60-record audit trail
(a field changed, a record removed at the start, middle or end, two swapped,
one rewritten with its own hash recomputed, the chain recomputed after a
change, a forged record appended); the fraction `ictl audit verify` flags.
Not in scope (and said so in docs/console.md): a writer who also rewrites
the anchor row.

`ictl soak --only web` runs it whole; tests/host/test_service_web.py runs a slice."""
import os
import random
import re
import shutil
import statistics
import tempfile
import time

from ictl import fleetkeys, pki

XSS = ('<script>alert("x1")</script>', '"><img src=x onerror=alert(2)>', "<svg onload=alert(3)>",
       "{{7*'7'}}", "{% print 7*'7' %}", "<iframe src=javascript:alert(4)>", "'><b onmouseover=alert(5)>b",
       "</title><script>x6</script>", "<a href=javascript:alert(7)>y</a>", "${7*7}<style>*{x:1}</style>")
# What must never appear in an answer if the payload was left unescaped/evaluated.
DANGER = ("<script>alert(", "<img src=x", "<svg onload", "7777777", "<iframe", "<b onmouseover",
          "<script>x6", "<a href=javascript", "<style>")
SQLI = ("' OR '1'='1", "'; DROP TABLE devices; --", "\" OR 1=1 --", "1; DELETE FROM web_users",
        "' UNION SELECT password_hash, totp_secret FROM web_users --", "%' OR 1=1 OR '%'='",
        "1) OR (1=1", "dev'--", "\\'; UPDATE web_users SET role='administrator' --", "0 OR 1=1",
        "'||(SELECT totp_secret FROM web_users LIMIT 1)||'", "1e9999")
COMMON = ("123456", "password", "qwerty123456", "letmein", "admin", "welcome1", "iloveyou", "Password1!",
          "monkey", "dragon", "111111", "abc123", "football", "shadow", "master", "sunshine")


class Tally:
    def __init__(self):
        self.cases = 0
        self.accepted = []
        self.by_kind = {}

    def case(self, kind, ok, what):
        self.cases += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if not ok:
            self.accepted.append("%s: %s" % (kind, what))


def _clean(text):
    return not any(d in text for d in DANGER)


def _done_actions(rig, since):
    """Audit records after seq `since` that are not refusals (= changes made)."""
    return [r["action"] for r in rig.db.query("SELECT action FROM audit_log WHERE seq > ?", (since,))
            if not r["action"].startswith("refused:")]


def _head(rig):
    return rig.db.one("SELECT head_seq FROM audit_anchor WHERE id = 1")["head_seq"]


def _feed_devices(rig, n_payloads):
    """Hostile devices through the real ingest path (sealed, checked)."""
    from ictl.service import ingest, simdev
    ca = pki.load_ca(rig.pki_dir)
    key = fleetkeys.ensure(rig.pki_dir)
    w = ingest.Ingest(rig.db_url, key, os.path.join(rig.pki_dir, pki.CA_CERT))
    ids = []
    for i, p in enumerate(XSS[:n_payloads]):
        dev = simdev.SimDevice(ca, fleetkeys.public_point(key), "evil-%02d" % i)
        short = p[:24]   # a record has 77 bytes for kind + reason + detail
        w.process_batch([dev.hello(), dev.reading(**{p: p, "temp_c": 20.0 + i}),
                         dev.reading(**{p: 1.5, "label": p}),
                         dev.events((short[:20], short, "rejected", short)),
                         dev.reply(1, False, p)])
        ids.append(dev.id)
    close = getattr(w, "close", None)
    if close:
        close()
    return ids


def xss_device(rig, t, admin, n_payloads):
    ids = _feed_devices(rig, n_payloads)
    pages = ["/", "/events", "/certificates", "/provisioning", "/rollouts", "/audit", "/api/v1/events"]
    for did in ids:
        pages += ["/devices/%s" % did, "/devices/%s/chart.svg" % did, "/?q=%s" % did]
    for path in pages:
        r = admin.get(rig.url + path, timeout=60)
        t.case("xss_device", r.status_code < 500 and _clean(r.text), "%s -> %s" % (path, r.status_code))
    return ids


def xss_form(rig, t, admin, admin_name, payloads):
    for p in payloads:
        for path, params in (("/", {"q": p}), ("/events", {"device": p}), ("/login", {"next": p}),
                             ("/devices/" + p, {}), ("/reauth", {"next": p})):
            r = admin.get(rig.url + path, params=params, timeout=60)
            t.case("xss_form", r.status_code < 500 and _clean(r.text), "GET %s %r" % (path, p))
        r = rig.form(admin, "/account/tokens", dict({"name": p, "ttl": "600", "scope": "fleet.view"},
                                                    **rig.reauth(admin_name)))
        t.case("xss_form", r.status_code < 500 and _clean(r.text), "token name %r" % p)
        r = rig.form(admin, "/users/new", dict({"username": p, "role": "viewer"}, **rig.reauth(admin_name)),
                     page="/users")
        t.case("xss_form", r.status_code < 500 and _clean(r.text), "username %r" % p)
    anon = rig.session()
    for p in payloads:
        page = anon.get(rig.url + "/login", timeout=60).text
        from ictl.service.web.testrig import csrf_of
        r = anon.post(rig.url + "/login", data={"csrf_token": csrf_of(page), "username": p, "password": p,
                                               "code": "000000"}, timeout=60)
        t.case("xss_form", r.status_code == 401 and _clean(r.text), "login with %r" % p)


def _counts(rig):
    return {tb: rig.db.one("SELECT count(*) AS n FROM %s" % tb)["n"]
            for tb in ("devices", "readings", "events", "web_users", "api_tokens", "rollouts")}


def sqli(rig, t, admin, viewer_token):
    from ictl.service.web.testrig import csrf_of
    before = _counts(rig)
    roles = {u["username"]: u["role"] for u in rig.db.query("SELECT username, role FROM web_users")}
    secrets = [u["totp_secret"] for u in rig.db.query("SELECT totp_secret FROM web_users")]
    anon = rig.session()
    h = {"Authorization": "Bearer " + viewer_token}
    for p in SQLI:
        for path, params in (("/", {"q": p}), ("/", {"status": p}), ("/", {"limit": p, "offset": p}),
                             ("/events", {"device": p}), ("/devices/" + p, {}), ("/devices/x/chart.svg",
                                                                                  {"since": p, "until": p})):
            r = admin.get(rig.url + path, params=params, timeout=60)
            t.case("sqli", r.status_code < 500 and not _leaks(r.text, secrets),
                   "GET %s %r -> %s" % (path, p, r.status_code))
        for path, params in (("/api/v1/devices", {"q": p}), ("/api/v1/events", {"device": p}),
                             ("/api/v1/devices/" + p, {}), ("/api/v1/devices/x/readings", {"since": p})):
            r = anon.get(rig.url + path, params=params, headers=h, timeout=60)
            t.case("sqli", r.status_code < 500 and not _leaks(r.text, secrets), "API %s %r" % (path, p))
        page = anon.get(rig.url + "/login", timeout=60).text
        r = anon.post(rig.url + "/login", data={"csrf_token": csrf_of(page), "username": p, "password": p,
                                               "code": "000000"}, allow_redirects=False, timeout=60)
        t.case("sqli", r.status_code == 401, "login %r -> %s" % (p, r.status_code))
    after = _counts(rig)
    roles_after = {u["username"]: u["role"] for u in rig.db.query("SELECT username, role FROM web_users")}
    t.case("sqli", after == before and roles_after == roles, "tables changed: %s -> %s" % (before, after))


def _leaks(text, secrets):
    """A password hash or a TOTP secret in an answer = data pulled out."""
    return "$argon2" in text or any(sec and sec in text for sec in secrets)


def _post_routes():
    from ictl.service.web import app as webapp
    return [r for r in webapp.routes() if not r.api and "POST" in r.methods]


def _sample(path, device):
    path = re.sub(r"<int:[a-z_]+>", "1", path)
    path = path.replace("<device_id>", device)
    return re.sub(r"<[a-z_]+>", "x", path)


def csrf(rig, t, admin, admin_name, other, device):
    from ictl.service.web.testrig import csrf_of
    for rt in _post_routes():
        if rt.permission == "public":
            continue
        url = rig.url + _sample(rt.path, device)
        body = {"confirm_id": device, "op": "reboot", "username": "csrf-made", "role": "viewer",
                "name": "csrf", "scope": "fleet.view", "ttl": "600", "action": "cancel"}
        body.update(rig.reauth(admin_name))
        valid = csrf_of(admin.get(rig.url + "/account", timeout=60).text)
        foreign = csrf_of(other.get(rig.url + "/account", timeout=60).text)
        for label, token, headers in (("no token", None, {}), ("forged", "A" * 43, {}),
                                      ("another session's token", foreign, {}),
                                      ("foreign Origin", valid, {"Origin": "https://attacker.example"}),
                                      ("foreign Referer", valid, {"Referer": "https://attacker.example/x"})):
            since = _head(rig)
            data = dict(body, **({"csrf_token": token} if token else {}))
            r = admin.post(url, data=data, headers=headers, allow_redirects=False, timeout=60)
            done = _done_actions(rig, since)
            t.case("csrf", r.status_code == 403 and not done, "%s %s -> %s %s" % (rt.path, label, r.status_code, done))


def fixation(rig, t, victim_name, rounds):
    from ictl.service.web import sessions
    for i in range(rounds):
        attacker = rig.session()
        attacker.get(rig.url + "/login", timeout=60)
        planted = attacker.cookies[sessions.COOKIE]
        victim = rig.session()
        victim.cookies.set(sessions.COOKIE, planted, domain="127.0.0.1", path="/")
        rig.login(victim_name, s=victim)
        r = attacker.get(rig.url + "/account", allow_redirects=False, timeout=60)
        t.case("fixation", r.status_code == 302, "planted id authenticated after the victim's login")
        forged = rig.session()
        forged.cookies.set(sessions.COOKIE, "f" * (40 + i), domain="127.0.0.1", path="/")
        r = forged.get(rig.url + "/account", allow_redirects=False, timeout=60)
        t.case("fixation", r.status_code == 302, "forged id accepted")
        old = victim.cookies[sessions.COOKIE]
        rig.form(victim, "/logout", {})
        replay = rig.session()
        replay.cookies.set(sessions.COOKIE, old, domain="127.0.0.1", path="/")
        r = replay.get(rig.url + "/account", allow_redirects=False, timeout=60)
        t.case("fixation", r.status_code == 302, "signed-out id still valid")


def escalation(rig, t, sessions_by_role, tokens_by_role, names, device):
    from ictl.service.web import app as webapp, permissions, tokens
    from ictl.service.web.testrig import csrf_of
    for role in ("viewer", "operator"):
        s = sessions_by_role[role]
        h = {"Authorization": "Bearer " + tokens_by_role[role]}
        for rt in webapp.routes():
            if permissions.allowed(role, rt.permission):
                continue
            url = rig.url + _sample(rt.path, device)
            for method in rt.methods:
                since = _head(rig)
                if rt.api:
                    r = s.request(method, url, headers=h, json={"confirm_id": device}, timeout=60)
                elif method == "GET":
                    r = s.get(url, allow_redirects=False, timeout=60)
                else:
                    token = csrf_of(s.get(rig.url + "/account", timeout=60).text)
                    data = dict({"csrf_token": token, "confirm_id": device, "username": "esc-" + role,
                                 "role": "administrator", "action": "cancel"}, **rig.reauth(names[role]))
                    r = s.post(url, data=data, allow_redirects=False, timeout=60)
                done = _done_actions(rig, since)
                t.case("escalation", r.status_code == 403 and not done,
                       "%s %s %s -> %s %s" % (role, method, rt.path, r.status_code, done))
        user = rig.db.one("SELECT * FROM web_users WHERE username = ?", (names[role],))
        for perm in sorted(set(permissions.MATRIX) - permissions.permissions_of(role)):
            try:
                tokens.create(rig.db, user, "esc", [perm], 600, True)
                ok = False
            except tokens.TokenError:
                ok = True
            t.case("escalation", ok, "%s got a token with %s" % (role, perm))
            r = rig.form(s, "/account/tokens", dict({"name": "esc", "ttl": "600", "scope": perm},
                                                    **rig.reauth(names[role])))
            t.case("escalation", r.status_code == 400 and "ictl_" not in r.text,
                   "%s token form with %s -> %s" % (role, perm, r.status_code))
        # a token with one character changed
        bad = tokens_by_role[role][:-1] + ("A" if tokens_by_role[role][-1] != "A" else "B")
        r = s.get(rig.url + "/api/v1/whoami", headers={"Authorization": "Bearer " + bad}, timeout=60)
        t.case("escalation", r.status_code == 401, "altered token accepted")


def brute_force(rig, t, target, attempts):
    anon = rig.session()
    from ictl.service.web.testrig import csrf_of
    page = anon.get(rig.url + "/login", timeout=60).text
    token = csrf_of(page)
    for i in range(attempts):
        pw = COMMON[i % len(COMMON)] + ("" if i < len(COMMON) else str(i))
        code = "%06d" % random.randrange(10 ** 6)
        r = anon.post(rig.url + "/login", data={"csrf_token": token, "username": target, "password": pw,
                                               "code": code}, allow_redirects=False, timeout=60)
        t.case("brute_force", r.status_code == 401, "guess %d signed in" % i)
    locked = rig.db.one("SELECT locked_until FROM web_users WHERE username = ?", (target,))["locked_until"]
    t.case("brute_force", bool(locked and locked > time.time()), "not locked after %d failures" % attempts)
    _, r = rig.login(target, s=anon)          # the right password and code, while locked
    t.case("brute_force", r.status_code == 401, "right credentials accepted while locked")
    acts = [r["action"] for r in rig.db.query("SELECT action FROM audit_log WHERE action = 'auth.lockout'")]
    t.case("brute_force", bool(acts), "lockout not audited")


def spraying(tmp, t, accounts_n, fast_hash):
    """One password tried on many accounts from one address: no account
    reaches its lockout, the address is blocked (audited), and then even
    the right credentials get the one failure answer."""
    from ictl.service.web.testrig import Rig, csrf_of
    threshold = 5
    rig = Rig(os.path.join(tmp, "spray"), {"source_threshold": threshold, "source_block": 600.0},
              fast_hash=fast_hash)
    try:
        rig.user("victim", "operator")
        anon = rig.session()
        token = csrf_of(anon.get(rig.url + "/login", timeout=60).text)
        answers = set()
        for i in range(max(accounts_n, threshold + 1)):
            name = "victim" if i == 0 else "staff-%d" % i
            r = anon.post(rig.url + "/login", data={"csrf_token": token, "username": name,
                                                   "password": COMMON[i % len(COMMON)] + "-spray", "code": "000000"},
                          allow_redirects=False, timeout=60)
            answers.add((r.status_code, r.text))
            t.case("spraying", r.status_code == 401, "sprayed guess %d signed in" % i)
        acts = [r["action"] for r in rig.db.query("SELECT action FROM audit_log WHERE action = 'auth.throttle'")]
        t.case("spraying", bool(acts), "address not blocked after %d failures across accounts" % threshold)
        _, r = rig.login("victim", s=anon)
        answers.add((r.status_code, r.text))
        t.case("spraying", r.status_code == 401, "right credentials accepted from a blocked address")
        t.case("spraying", len(answers) == 1, "a blocked address gets a different answer")
    finally:
        rig.stop()


def enumeration(rig, t, existing, rounds):
    from ictl.service.web.testrig import csrf_of
    anon = rig.session()
    token = csrf_of(anon.get(rig.url + "/login", timeout=60).text)
    answers, times = {}, {"known": [], "unknown": []}
    for i in range(rounds):
        pair = [("known", existing[i % len(existing)]), ("unknown", "ghost-%d-%d" % (i, random.randrange(10 ** 6)))]
        for kind, name in pair if i % 2 else pair[::-1]:
            t0 = time.perf_counter()
            r = anon.post(rig.url + "/login", data={"csrf_token": token, "username": name,
                                                   "password": "wrong-but-long-%d" % i, "code": "000000"},
                          allow_redirects=False, timeout=60)
            times[kind].append(time.perf_counter() - t0)
            answers.setdefault((r.status_code, r.text), []).append(name)
            t.case("enumeration", len(answers) == 1, "login answer for %s differs" % name)
        for path in ("/reset/", "/enrol/", "/setup/"):
            r = anon.get(rig.url + path + "x%d" % i, timeout=60)
            t.case("enumeration", r.status_code == 404, "%s answered %s" % (path, r.status_code))
    ratio = statistics.median(times["known"]) / statistics.median(times["unknown"])
    if rounds >= 10:    # fewer samples say nothing about timing (tests/host/test_service_web.py measures it)
        t.case("enumeration", 0.5 < ratio < 2.0, "login timing known/unknown = %.2f" % ratio)
    return ratio


def attack(tmp, scale=1.0, fast_hash=False):
    """Run every attack; returns the Tally. scale < 1 runs a slice."""
    from ictl.service.web import accounts, tokens
    from ictl.service.web.testrig import Rig
    # The address throttle stays out of the way here (every request comes
    # from 127.0.0.1); spraying() tests it on a console of its own.
    rig = Rig(tmp, {"lockout_threshold": 5, "lockout_duration": 600.0, "source_threshold": 10 ** 9},
              fast_hash=fast_hash)
    t = Tally()
    try:
        admin_name = rig.enrol(accounts.init_setup_token(rig.db))
        names = {}
        for role in ("viewer", "operator", "administrator"):
            names[role] = rig.user("soak-" + role, role)
        for i in range(3):
            rig.user("known-%d" % i, "viewer")
        target = rig.user("target", "operator")
        admin = rig.signed_in(admin_name)
        other = rig.signed_in(names["administrator"])
        sess = {r: rig.signed_in(names[r]) for r in ("viewer", "operator")}
        toks = {}
        for role in ("viewer", "operator"):
            user = rig.db.one("SELECT * FROM web_users WHERE username = ?", (names[role],))
            from ictl.service.web import permissions
            toks[role] = tokens.create(rig.db, user, "soak", permissions.permissions_of(role), 600, True)[1]
        n = max(2, int(len(XSS) * scale))
        ids = xss_device(rig, t, admin, n)
        xss_form(rig, t, admin, admin_name, XSS[:n])
        sqli(rig, t, admin, toks["viewer"])
        csrf(rig, t, admin, admin_name, other, ids[0])
        fixation(rig, t, names["viewer"], max(1, int(5 * scale)))
        escalation(rig, t, sess, toks, names, ids[0])
        brute_force(rig, t, target, max(8, int(40 * scale)))
        t.timing = enumeration(rig, t, ["known-0", "known-1", "known-2"], max(4, int(20 * scale)))
        t.audit = __import__("ictl.service.audit", fromlist=["verify"]).verify(rig.db)
        t.case("audit", t.audit["ok"], "audit chain broken after the campaign: %s" % t.audit["problems"][:3])
    finally:
        rig.stop()
    spraying(tmp, t, max(8, int(30 * scale)), fast_hash)
    return t


# ---------------------------------------------------------------- audit tamper

TAMPERS = ("alter_field", "delete_middle", "delete_first", "delete_last", "swap", "rehash_one",
           "rechain_after", "append_forged", "truncate_tail", "alter_time")


def _tamper(db, kind, rng, n):
    from ictl.service import audit
    seq = rng.randrange(2, n)
    if kind == "alter_field":
        col = rng.choice(("who", "source", "action", "params", "result"))
        db.execute("UPDATE audit_log SET %s = ? WHERE seq = ?" % col, ('{"x":1}', seq))
    elif kind == "alter_time":
        db.execute("UPDATE audit_log SET at = at + 1 WHERE seq = ?", (seq,))
    elif kind == "delete_middle":
        db.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
    elif kind == "delete_first":
        db.execute("DELETE FROM audit_log WHERE seq = (SELECT min(seq) FROM audit_log)")
    elif kind == "delete_last":
        db.execute("DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
    elif kind == "truncate_tail":
        db.execute("DELETE FROM audit_log WHERE seq > ?", (seq,))
    elif kind == "swap":
        a = db.one("SELECT * FROM audit_log WHERE seq = ?", (seq,))
        b = db.one("SELECT * FROM audit_log WHERE seq = ?", (seq - 1,))
        for x, y in ((a, b), (b, a)):
            db.execute("UPDATE audit_log SET who = ?, action = ?, params = ?, result = ? WHERE seq = ?",
                       (y["who"], y["action"], y["params"], y["result"], x["seq"]))
    elif kind in ("rehash_one", "rechain_after"):
        rows = db.query("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq", (seq,))
        prev = rows[0]["prev_hash"]
        for i, row in enumerate(rows if kind == "rechain_after" else rows[:1]):
            rec = dict(row, who=row["who"] + "-x" if i == 0 else row["who"])
            h = audit.chain_hash(prev, rec)
            db.execute("UPDATE audit_log SET who = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (rec["who"], prev, h, row["seq"]))
            prev = h
    elif kind == "append_forged":
        last = db.one("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1")
        rec = dict(last, seq=last["seq"] + 1, who="mallory", action="device.wipe")
        db.execute("INSERT INTO audit_log (seq, at, who, source, action, params, result, prev_hash, hash)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (rec["seq"], rec["at"], rec["who"], rec["source"],
                                                          rec["action"], rec["params"], rec["result"], last["hash"],
                                                          audit.chain_hash(last["hash"], rec)))


def tamper_trials(tmp, trials, seed=16):
    """Fraction of random tamperings audit.verify detects (each undone after)."""
    from ictl.service import audit, db as dbmod
    rng = random.Random(seed)
    db = dbmod.connect(os.path.join(str(tmp), "tamper.db"))
    db.migrate()
    n = 60
    for i in range(n):
        audit.record(db, "op-%d" % (i % 4), "127.0.0.1", rng.choice(("device.wipe", "rollout.start", "auth.login")),
                     {"device": "dev-%04d" % i, "password": "p"}, {"ok": bool(i % 3)})
    if not audit.verify(db)["ok"]:
        raise RuntimeError("the untouched trail does not verify")
    detected, by_kind = 0, {}
    for i in range(trials):
        kind = TAMPERS[i % len(TAMPERS)]
        with db.transaction():
            db.execute("SAVEPOINT tamper")
            _tamper(db, kind, rng, n)
            found = not audit.verify(db)["ok"]
            db.execute("ROLLBACK TO SAVEPOINT tamper")
        detected += found
        by_kind.setdefault(kind, [0, 0])
        by_kind[kind][0] += found
        by_kind[kind][1] += 1
    ok_after = audit.verify(db)["ok"]
    db.close()
    if not ok_after:
        raise RuntimeError("a tampering was not undone")
    return detected / float(trials), by_kind


def add_args(p):
    p.add_argument("--web-scale", type=float, default=1.0,
                   help="web soak: fraction of the attack campaign to run (default 1.0)")


def run(fig, args):
    scale = getattr(args, "web_scale", 1.0) or 1.0
    tmp = tempfile.mkdtemp(prefix="ictl-soak-web-")
    try:
        t0 = time.time()
        t = attack(tmp, scale)
        kinds = ", ".join("%s %d" % kv for kv in sorted(t.by_kind.items()))
        fig.add("web_attack_cases", t.cases, "cases",
                "attacks over HTTPS on the real console (argon2id at production cost): %s; %.0f s" % (kinds, time.time() - t0))
        fig.add("web_attack_accepted", len(t.accepted), "cases",
                "attacks that got through" + (": " + "; ".join(t.accepted[:5]) if t.accepted else "")
                + "; login timing known/unknown user %.2f" % t.timing)
        frac, by_kind = tamper_trials(tmp, max(50, int(500 * scale)))
        fig.add("audit_tamper_detected", frac, "fraction",
                "random tamperings of a 60-record trail detected by audit.verify: "
                + ", ".join("%s %d/%d" % (k, v[0], v[1]) for k, v in sorted(by_kind.items())))
        return 1 if t.accepted or frac < 1.0 else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
