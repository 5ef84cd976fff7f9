"""The console's web framework: route registration with a permission and a
re-authentication flag, database sessions, CSRF, security headers, the audit
hook, and `render` for server-side pages (Jinja2, autoescaping everywhere).

Pages register at import time:

    from ictl.service.web.app import route, render

    @route("/devices/<device_id>", methods=("GET",), permission="fleet.view")
    def device(request, device_id):
        return render(request, "device.html", dev=store.device(request.db, device_id))

Every request to a registered route goes through `_dispatch`, in this order:
session or API token -> signed in? -> role holds the route's permission
(403) -> for a state change: CSRF token and Origin (403) -> re-authentication
when the route or its permission asks for it -> for a state change: the
write-ahead audit record `begin:<action>` (who, source address, parameters
with secrets redacted); when it cannot be written the request is refused
with 503 and nothing done -> the handler -> for a state change: the outcome
record <action> (the same, with the result and the seq of its begin record).
An action whose outcome record is lost (the database failing mid-request,
the process killed) is still in the trail as begun: no action is unaudited,
including those whose effects leave the database (a published command, a
revoked certificate). Refusals of state changes are audited too. The
handler sets `request.audit_result` (a dict) to say what came back.

API routes (`api=True`, under /api/) take only `Authorization: Bearer` tokens
and never cookies, so cross-site requests cannot ride on a browser session.
"""
import hashlib
import importlib
import json
import os
import time
import urllib.parse

import flask
import jinja2
from markupsafe import Markup

from ictl.service import audit
from ictl.service.web import accounts, permissions, sessions, tokens

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
STATIC = os.path.join(HERE, "static")
UI_TEMPLATES = os.path.join(os.path.dirname(HERE), "ui", "templates")
# Modules whose import registers routes: WEB's own, then UI's pages (optional).
ROUTE_MODULES = ("ictl.service.web.views", "ictl.service.web.api", "ictl.service.ui.pages")

CSP = ("default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer Chromium sends
    # "Origin: null" on same-origin form posts (Fetch, "append a request
    # Origin header"), which the Origin check must then refuse; nothing
    # leaks to other sites either way.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=()",
}
CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_FORM_SECRETS = ("csrf_token", "reauth_password", "reauth_code")

DEFAULTS = dict(accounts.DEFAULTS, **sessions.DEFAULTS, **tokens.DEFAULTS)
DEFAULTS.update({
    "max_upload": 16 * 1024 * 1024,   # an update image; larger bodies get 413
    "max_form_fields": 200,
    "pages": True,                     # False: WEB's routes only (UI's pages not imported)
})


class Route:
    def __init__(self, path, methods, permission, reauth, func, api, action, nav, session):
        self.path, self.methods, self.permission = path, tuple(methods), permission
        self.reauth, self.func, self.api, self.nav, self.session = reauth, func, api, nav, session
        self.endpoint = "%s.%s" % (func.__module__.rsplit(".", 1)[-1], func.__name__)
        self.action = action or self.endpoint

    def needs_reauth(self, method):
        """The flag, or the matrix: a state change under a REAUTH permission."""
        return self.reauth or (method in CHANGING and self.permission in permissions.REAUTH)


ROUTES = []


def route(path, methods=("GET",), permission=None, reauth=False, api=False, action=None, nav=None,
          session=True):
    """Register a handler `func(request, **url_params)`. `permission` is
    required (a name from permissions.MATRIX, or PUBLIC / AUTHENTICATED);
    `nav` puts a link in the base template's menu for those who hold it."""
    if permission is None:
        raise TypeError("route %s: permission is required" % path)
    permissions.check_permission_name(permission)
    if api and not path.startswith("/api/"):
        raise ValueError("API routes live under /api/")

    def deco(func):
        for r in ROUTES:
            if r.path == path and set(r.methods) & set(methods):
                if r.func.__module__ == func.__module__ and r.func.__name__ == func.__name__:
                    ROUTES.remove(r)          # a module re-imported (tests): same route
                    break
                raise ValueError("route %s %s registered twice" % (path, methods))
        ROUTES.append(Route(path, methods, permission, reauth, func, api, action, nav, session))
        return func
    return deco


class State:
    """What the app shares across requests: the database, the config and
    the password hasher (no per-user state)."""

    def __init__(self, db, config):
        self.db = db
        self.config = config
        self.hasher = accounts.Hasher(config)
        self.last_purge = 0.0


def _import_routes(pages=True):
    for name in ROUTE_MODULES if pages else ROUTE_MODULES[:2]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (name.startswith(e.name or "\0") and name.startswith("ictl.service.ui")):
                raise


def create_app(db, config=None):
    """A Flask WSGI app over `db` (a migrated ictl.service.db.Database)."""
    cfg = dict(DEFAULTS, **(config or {}))
    _import_routes(cfg.get("pages", True))
    app = flask.Flask("ictl.service.web", static_folder=STATIC, static_url_path="/static",
                      template_folder=None)
    app.jinja_loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(TEMPLATES),
                                            jinja2.FileSystemLoader(UI_TEMPLATES)])
    app.jinja_env.autoescape = True          # every template, .svg and .txt included
    app.jinja_env.undefined = jinja2.StrictUndefined if cfg.get("strict_templates") else jinja2.Undefined
    app.config.update(MAX_CONTENT_LENGTH=int(cfg["max_upload"]), MAX_FORM_PARTS=int(cfg["max_form_fields"]),
                      MAX_FORM_MEMORY_SIZE=1024 * 1024, SESSION_COOKIE_SECURE=True,
                      SEND_FILE_MAX_AGE_DEFAULT=300, TRAP_HTTP_EXCEPTIONS=False)
    app.config["ICTL"] = State(db, cfg)
    for rt in ROUTES:
        if not cfg.get("pages", True) and rt.func.__module__ not in ROUTE_MODULES[:2]:
            continue
        app.add_url_rule(rt.path, rt.endpoint, _view(rt), methods=list(rt.methods))
    if not any(r.path == "/" for r in ROUTES):
        app.add_url_rule("/", "root", lambda: flask.redirect("/account"))
    app.after_request(_headers)
    for code in (400, 401, 403, 404, 405, 413, 500):
        app.register_error_handler(code, _error_page)
    return app


def routes():
    """The registered routes (for tests walking the table against the matrix)."""
    _import_routes()
    return list(ROUTES)


# ------------------------------------------------------------------ dispatch

def _view(rt):
    def view(**kw):
        return _dispatch(rt, kw)
    view.__name__ = rt.endpoint.replace(".", "_")
    return view


def _state():
    return flask.current_app.config["ICTL"]


def source_address(req):
    # No proxy is trusted: the peer address is the source (see docs/console.md).
    return req.remote_addr or "-"


def _dispatch(rt, kw):
    st = _state()
    req = flask.request._get_current_object()
    req.db, req.ictl, req.user, req.session, req.token = st.db, st, None, None, None
    req.audit_result, req.audit_action, req.audit_who, req.audit_begin = None, None, None, None
    req.set_cookie_sid = None
    changing = req.method in CHANGING
    if rt.api:
        return _dispatch_api(rt, req, kw, st, changing)
    now = time.time()
    if now - st.last_purge > 60:
        st.last_purge = now
        sessions.purge(st.db, st.config)
    req.session = sessions.load(st.db, req.cookies.get(sessions.COOKIE), st.config)
    if req.session is not None and req.session.user_id:
        user = accounts.get_user(st.db, req.session.user_id)
        if user is None or user["disabled"] or user["password_hash"] is None:
            sessions.destroy(st.db, req.session)
            req.session, req.set_cookie_sid = None, ""
        else:
            req.user = user
    if req.session is None and rt.session and rt.permission == permissions.PUBLIC:
        req.session = sessions.create(st.db, None, source_address(req))
        req.set_cookie_sid = req.session.sid
    if rt.permission != permissions.PUBLIC and req.user is None:
        if changing:
            return _refuse(req, rt, kw, 401, "not signed in", "Sign in first.")
        return _finish(req, flask.redirect("/login?next=" + urllib.parse.quote(_local_path(req), safe="/")))
    if req.user is not None and not permissions.allowed(req.user["role"], rt.permission):
        return _refuse(req, rt, kw, 403, "role %s lacks %s" % (req.user["role"], rt.permission),
                       "Your role does not allow this.")
    if changing:
        if not sessions.csrf_ok(req.session, req.form.get("csrf_token") or req.headers.get("X-CSRF-Token")):
            return _refuse(req, rt, kw, 403, "CSRF token missing or wrong",
                           "This form expired or did not come from this console: reload the page and try again.")
        if not _same_origin(req):
            return _refuse(req, rt, kw, 403, "cross-origin request (Origin %s)" % req.headers.get("Origin"),
                           "Cross-site request refused.")
    if req.user is not None and rt.needs_reauth(req.method):
        refused = _reauth(req, rt, kw, st)
        if refused is not None:
            return refused
    if changing and not _begin(req, rt, kw):
        return _finish(req, (render(req, "error.html", status=503, message=AUDIT_DOWN, reauth=False,
                                    next=_local_path(req)), 503))
    try:
        resp = flask.make_response(rt.func(req, **kw))
    except Exception as e:
        if changing:
            _audit(req, rt, {"status": 500, "error": type(e).__name__})
        raise
    if changing:
        result = {"status": resp.status_code}
        if isinstance(req.audit_result, dict):
            result.update(req.audit_result)
        _audit(req, rt, result)
    return _finish(req, resp)


def _local_path(req):
    path = req.full_path if req.query_string else req.path
    return path if path.startswith("/") and not path.startswith("//") else "/"


def safe_next(value, default="/"):
    """A redirect target only within this site (no //host, no scheme)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") \
            or "\\" in value or len(value) > 512:
        return default
    parts = urllib.parse.urlsplit(value)
    return default if parts.scheme or parts.netloc else value


def _same_origin(req):
    """Origin (or, without it, Referer) must be this console when present.
    The CSRF token is the real check; this one also stops a page that got
    hold of a token from another origin."""
    origin = req.headers.get("Origin")
    if origin == "null":             # opaque origin (privacy-sensitive context): judge by Referer
        origin = None
    if origin is None:
        ref = req.headers.get("Referer")
        if ref is None:
            return True
        p = urllib.parse.urlsplit(ref)
        origin = "%s://%s" % (p.scheme, p.netloc)
    return origin == "https://" + req.host


def _reauth(req, rt, kw, st):
    """None if re-authenticated (fresh, or by the inline fields), else the
    refusal response."""
    password = req.form.get("reauth_password")
    if password is not None and req.method in CHANGING:
        out = accounts.verify_reauth(st.db, st.hasher, st.config, req.user, password, req.form.get("reauth_code", ""))
        if out.user is None:
            if out.locked_now:
                lockout(req, req.user["username"])
            return _refuse(req, rt, kw, 401, "re-authentication failed",
                           "Re-authentication failed: check the password and the code.")
        sessions.mark_reauth(st.db, req.session)
        return None
    if req.session.reauth_fresh(st.config):
        return None
    if req.method in CHANGING:
        return _refuse(req, rt, kw, 401, "re-authentication required",
                       "This action needs your password and a new code: re-authenticate, then submit again.",
                       reauth=True)
    return _finish(req, flask.redirect("/reauth?next=" + urllib.parse.quote(_local_path(req), safe="/")))


def lockout(req, username):
    """Audit a lock and end the locked user's sessions."""
    audit.record(req.db, "-", source_address(req), "auth.lockout", {"username": username},
                 {"locked_for_s": req.ictl.config["lockout_duration"]})
    user = req.db.one("SELECT id FROM web_users WHERE username = ?", (username,))
    if user:
        accounts.drop_sessions(req.db, user["id"])


def throttle(req):
    """Audit an address blocked for too many failed sign-ins across accounts."""
    audit.record(req.db, "-", source_address(req), "auth.throttle", {"source": source_address(req)},
                 {"blocked_for_s": req.ictl.config["source_block"]})


def _form_params(req, kw):
    params = dict(kw)
    for k in req.args:
        params.setdefault(k, req.args.get(k))
    for k in req.form:
        if k in _FORM_SECRETS:
            continue
        vals = req.form.getlist(k)
        params[k] = vals[0] if len(vals) == 1 else vals
    for k, f in req.files.items():
        f.stream.seek(0)                # the handler may have read it already
        data = f.stream.read()
        f.stream.seek(0)
        params[k] = {"filename": f.filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if req.is_json:
        body = req.get_json(silent=True)
        if body is not None:
            params["json"] = body
    elif req.mimetype == "application/octet-stream":
        params["body"] = req.get_data(cache=True)      # audit.redact keeps its size and SHA-256
    return params


def _who(req):
    if req.audit_who:
        return req.audit_who
    if req.user is not None:
        return req.user["username"] + (" (token %s)" % req.token["id"] if req.token else "")
    return "-"


AUDIT_DOWN = "The audit trail cannot be written just now, so nothing was done. Try again later."


def _begin(req, rt, kw):
    """Append the write-ahead record of a state change; False (logged, no
    secret in it) when it cannot be written: the caller then refuses."""
    req.audit_params = _form_params(req, kw)  # read once (uploads hashed once): the outcome record reuses it
    try:
        req.audit_begin = audit.record(req.db, _who(req), source_address(req), "begin:" + rt.action,
                                       req.audit_params, {})
        return True
    except Exception as e:  # any database failure: refuse rather than act unaudited
        flask.current_app.logger.error("audit trail not writable, %s %s refused: %s", req.method, rt.action,
                                       type(e).__name__)
        return False


def _audit(req, rt, result):
    # The outcome record of a state change whose begin record _begin wrote.
    audit.record(req.db, _who(req), source_address(req), req.audit_action or rt.action,
                 req.audit_params, dict(result, begin=req.audit_begin))


def _refuse(req, rt, kw, status, why, message, reauth=False):
    """A refused request: audited when it tried to change something or was
    denied by role, answered without doing anything."""
    if req.method in CHANGING or status == 403:
        audit.record(req.db, _who(req), source_address(req), "refused:" + rt.action, _form_params(req, kw),
                     {"status": status, "reason": why})
    if rt.api:
        return _finish(req, (flask.jsonify({"error": message}), status))
    if status == 401 and not reauth and req.user is None:
        return _finish(req, flask.redirect("/login"))
    back = _local_path(req) if req.method == "GET" else safe_next(urllib.parse.urlsplit(req.referrer or "").path)
    return _finish(req, (render(req, "error.html", status=status, message=message, reauth=reauth,
                                next=back), status))


def _finish(req, resp):
    resp = flask.make_response(resp)
    if req.set_cookie_sid is not None:
        if req.set_cookie_sid:
            resp.set_cookie(sessions.COOKIE, req.set_cookie_sid, secure=True, httponly=True,
                            samesite="Strict", path="/")
        else:
            resp.delete_cookie(sessions.COOKIE, secure=True, httponly=True, samesite="Strict", path="/")
    return resp


def login_session(req, user):
    """Rotate to a fresh session for `user` (called by the login view)."""
    req.session = sessions.rotate(req.db, req.session, user["id"], source_address(req))
    req.set_cookie_sid = req.session.sid
    req.user = user


def logout_session(req):
    sessions.destroy(req.db, req.session)
    req.session, req.set_cookie_sid = None, ""


# ------------------------------------------------------------------ API

def _dispatch_api(rt, req, kw, st, changing):
    auth = req.headers.get("Authorization", "")
    found = tokens.lookup(st.db, auth[7:].strip()) if auth.startswith("Bearer ") else None
    if found is None:
        if rt.permission == permissions.PUBLIC:
            return _api_call(rt, req, kw, changing)
        return _refuse(req, rt, kw, 401, "no valid API token", "a valid bearer token is required")
    req.token, req.user, scopes = found
    req.api_scopes = scopes
    if rt.permission not in (permissions.PUBLIC, permissions.AUTHENTICATED) and rt.permission not in scopes:
        return _refuse(req, rt, kw, 403, "token scopes lack %s" % rt.permission,
                       "this token's scopes do not include %s" % rt.permission)
    return _api_call(rt, req, kw, changing)


def _api_call(rt, req, kw, changing):
    if changing and not _begin(req, rt, kw):
        return _finish(req, (flask.jsonify({"error": AUDIT_DOWN}), 503))
    try:
        out = rt.func(req, **kw)
    except ApiError as e:
        out = ({"error": str(e)}, e.status)
    except Exception as e:
        if changing:
            _audit(req, rt, {"status": 500, "error": type(e).__name__})
        raise
    body, status = out if isinstance(out, tuple) else (out, 200)
    resp = flask.make_response(body if isinstance(body, flask.Response) else
                               flask.Response(json.dumps(body, default=str, sort_keys=True),
                                              mimetype="application/json"), status)
    if changing:
        result = {"status": resp.status_code}
        result.update(req.audit_result if isinstance(req.audit_result, dict) else
                      body if isinstance(body, dict) else {})
        _audit(req, rt, result)
    return resp


class ApiError(Exception):
    """A refused API request: a JSON {"error": ...} with `status`."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ pages

def _nav(user):
    if user is None:
        return []
    return [(r.nav, r.path) for r in ROUTES
            if r.nav and not r.api and permissions.allowed(user["role"], r.permission)]


def _banner(db):
    try:
        pages = importlib.import_module("ictl.service.ui.pages")
    except ModuleNotFoundError:
        return None
    fn = getattr(pages, "banner", None)
    return fn(db) if fn else None


def render(request, template, **ctx):
    """The HTML of `template` (extending base.html) with the page context:
    user, csrf_token, csrf_field(), reauth_fields(), can(permission), nav,
    banner. Returns a string; return (render(...), status) for another code."""
    user = getattr(request, "user", None)
    session = getattr(request, "session", None)
    csrf = session.csrf if session is not None else ""
    base = {
        "user": user,
        "csrf_token": csrf,
        "csrf_field": lambda: Markup('<input type="hidden" name="csrf_token" value="%s">') % csrf,
        "reauth_fields": lambda: Markup(flask.render_template("_reauth_fields.html")),
        "can": lambda p: user is not None and permissions.allowed(user["role"], p),
        "nav": _nav(user),
        "banner": _banner(request.db) if user is not None and hasattr(request, "db") else None,
        "path": request.path,
    }
    base.update(ctx)
    return flask.render_template(template, **base)


def _headers(resp):
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    if not flask.request.path.startswith("/static/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _error_page(e):
    code = getattr(e, "code", 500) or 500
    messages = {400: "Bad request.", 401: "Sign in first.", 403: "Forbidden.", 404: "Not found.",
                405: "Method not allowed.", 413: "The upload is too large.", 500: "Internal error."}
    if flask.request.path.startswith("/api/"):
        return flask.jsonify({"error": messages.get(code, "error")}), code
    req = flask.request._get_current_object()
    for attr in ("user", "session"):
        if not hasattr(req, attr):
            setattr(req, attr, None)
    return render(req, "error.html", status=code, message=messages.get(code, "Error."), reauth=False,
                  next="/"), code
