"""WEB's own pages: sign-in, sign-out, first administrator (setup link),
enrolment and reset links, re-authentication, own account and API tokens,
and the health route."""
import flask
from markupsafe import Markup

from ictl.service import audit
from ictl.service.web import accounts, app, permissions, tokens
from ictl.service.web.app import render, route

P = permissions
FAILED = "Sign-in failed: check the user name, the password and the code."


@route("/healthz", permission=P.PUBLIC, session=False)
def healthz(request):
    """Static health route (the overview benchmark's baseline)."""
    return flask.Response("ok\n", mimetype="text/plain")


@route("/login", methods=("GET", "POST"), permission=P.PUBLIC, action="auth.login")
def login(request):
    nxt = app.safe_next(request.values.get("next"), "/")
    if request.method == "GET":
        if request.user is not None:
            return flask.redirect(nxt)
        return render(request, "login.html", error=None, next=nxt)
    username = request.form.get("username", "")
    out = accounts.authenticate(request.db, request.ictl.hasher, request.ictl.config, username,
                                request.form.get("password", ""), request.form.get("code", ""),
                                source=app.source_address(request))
    if out.user is None:
        request.audit_result = {"outcome": "failure", "reason": out.reason}
        if out.locked_now:
            app.lockout(request, username)
        if out.throttled_now:
            app.throttle(request)
        # One answer for every failure: same page, same status, same length.
        return render(request, "login.html", error=FAILED, next=nxt), 401
    app.login_session(request, out.user)
    request.audit_who = out.user["username"]
    request.audit_result = {"outcome": "ok", "role": out.user["role"]}
    return flask.redirect(nxt)


@route("/logout", methods=("POST",), permission=P.AUTHENTICATED, action="auth.logout")
def logout(request):
    app.logout_session(request)
    return flask.redirect("/login")


def _onetime_page(request, token, kinds):
    row = accounts.onetime(request.db, request.ictl.hasher, token, kinds)
    if row is None:
        request.audit_result = {"outcome": "failure", "reason": "invalid link"}
        return render(request, "error.html", status=404, reauth=False, next="/login",
                      message="This link is invalid, used or expired: ask an administrator for a new one."), 404
    user = accounts.get_user(request.db, row["user_id"]) if row["user_id"] else None
    name = user["username"] if user else "administrator"
    uri = accounts.totp_uri(row["pending_totp"], name)
    ctx = {"kind": row["kind"], "username": user["username"] if user else None,
           "secret": row["pending_totp"], "qr": Markup(accounts.totp_qr_svg(uri)),
           "uri": uri, "error": None, "min_length": accounts.PASSWORD_MIN}
    if request.method == "GET":
        return render(request, "onetime.html", **ctx)
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        ctx["error"] = "the two passwords differ"
    else:
        try:
            done = accounts.redeem(request.db, request.ictl.hasher, token, kinds,
                                   request.form.get("username", ""), password, request.form.get("code", ""))
        except accounts.AccountError as e:
            ctx["error"] = str(e)
        else:
            request.audit_who = done["username"]
            request.audit_result = {"outcome": "ok", "user": done["username"], "role": done["role"]}
            return render(request, "message.html", title="Account ready",
                          message="The account %s is ready: sign in with the password and a code." % done["username"])
    request.audit_result = {"outcome": "failure", "reason": ctx["error"]}
    return render(request, "onetime.html", **ctx), 400


@route("/setup/<token>", methods=("GET", "POST"), permission=P.PUBLIC, action="account.setup")
def setup(request, token):
    return _onetime_page(request, token, ("setup",))


@route("/enrol/<token>", methods=("GET", "POST"), permission=P.PUBLIC, action="account.enrol")
def enrol(request, token):
    return _onetime_page(request, token, ("enrol",))


@route("/reset/<token>", methods=("GET", "POST"), permission=P.PUBLIC, action="account.reset")
def reset(request, token):
    return _onetime_page(request, token, ("reset",))


@route("/reauth", methods=("GET", "POST"), permission=P.AUTHENTICATED, action="auth.reauth")
def reauth(request):
    nxt = app.safe_next(request.values.get("next"), "/")
    if request.method == "GET":
        return render(request, "reauth.html", error=None, next=nxt)
    out = accounts.verify_reauth(request.db, request.ictl.hasher, request.ictl.config, request.user,
                                 request.form.get("password", ""), request.form.get("code", ""))
    if out.user is None:
        request.audit_result = {"outcome": "failure", "reason": out.reason}
        if out.locked_now:
            app.lockout(request, request.user["username"])
        return render(request, "reauth.html", error="Re-authentication failed.", next=nxt), 401
    from ictl.service.web import sessions
    sessions.mark_reauth(request.db, request.session)
    request.audit_result = {"outcome": "ok"}
    return flask.redirect(nxt)


@route("/account", permission=P.AUTHENTICATED, nav="Account")
def account(request, message=None, error=None, new_token=None):
    u = request.user
    return render(request, "account.html", me=u, tokens=tokens.list_for(request.db, u["id"]),
                  scopes=sorted(permissions.permissions_of(u["role"])), reauth_scopes=permissions.REAUTH,
                  message=message, error=error, new_token=new_token,
                  max_ttl=int(request.ictl.config["token_max_ttl"]))


@route("/account/password", methods=("POST",), permission=P.AUTHENTICATED, action="account.password")
def password(request):
    f = request.form
    if f.get("new_password", "") != f.get("new_password2", ""):
        request.audit_result = {"outcome": "failure", "reason": "passwords differ"}
        return account(request, error="The two new passwords differ."), 400
    try:
        accounts.change_password(request.db, request.ictl.hasher, request.ictl.config, request.user,
                                 f.get("password", ""),
                                 f.get("code", ""), f.get("new_password", ""))
    except accounts.AccountError as e:
        request.audit_result = {"outcome": "failure", "reason": str(e)}
        return account(request, error=str(e)), 400
    accounts.drop_sessions(request.db, request.user["id"], keep=request.session.row["id_hash"])
    request.audit_result = {"outcome": "ok"}
    return account(request, message="Password changed; your other sessions were signed out.")


@route("/account/tokens", methods=("POST",), permission=P.AUTHENTICATED, reauth=True, action="token.create")
def token_create(request):
    try:
        tid, tok = tokens.create(request.db, request.user, request.form.get("name"),
                                 request.form.getlist("scope"), request.form.get("ttl", "3600"),
                                 reauthed=True, config=request.ictl.config)
    except tokens.TokenError as e:
        request.audit_result = {"outcome": "failure", "reason": str(e)}
        return account(request, error=str(e)), 400
    request.audit_result = {"outcome": "ok", "token_id": tid}
    return account(request, message="Token %s created: copy it now, it is not shown again." % tid, new_token=tok)


@route("/account/tokens/<token_id>/revoke", methods=("POST",), permission=P.AUTHENTICATED, action="token.revoke")
def token_revoke(request, token_id):
    try:
        request.audit_result = tokens.revoke(request.db, request.user["id"], token_id)
    except tokens.TokenError as e:
        request.audit_result = {"outcome": "failure", "reason": str(e)}
        return account(request, error=str(e)), 400
    return flask.redirect("/account")


@route("/audit/export", permission="audit.view", action="audit.export")
def audit_export(request):
    """The whole trail as JSON lines (download)."""
    import io
    buf = io.StringIO()
    audit.export_jsonl(request.db, buf)
    return flask.Response(buf.getvalue(), mimetype="application/x-ndjson",
                          headers={"Content-Disposition": "attachment; filename=audit.jsonl"})
