"""The console's pages (issue 16): fleet overview, device page with its
readings chart, security events and alarms, rollouts, provisioning records,
certificates, the operator audit trail and users.

Each handler is registered on the web framework's route table
(ictl.service.web.app.route) with the one permission it needs
(ictl/service/web/permissions.py) and, for wipe, revoke, rollout start and
user changes, re-authentication. The framework checks the session, the role,
the CSRF token and the re-authentication before a handler runs, and audits
every state change with the result the handler leaves in
request.audit_result; the handlers only read (ictl.service.store) or call
one action (rollout, fleetops, alarms, web.accounts) with the operator as
`by`.

Templates (templates/*.html) are Jinja2 with autoescaping on: everything a
device sent (field names, values, event kinds, reasons, details, reply
reasons) is shown through {{ }} and nothing is marked safe. No inline
script or style: the live rollout progress is static/ui/poll.js, the chart
an SVG served as an image."""
import json
import os
import re
import time

from flask import Response

from ictl import console
from ictl.service import alarms as fleet_alarms
from ictl.service import audit, fleetops, rollout, store
from ictl.service.ui import chart, forms
from ictl.service.web import accounts, permissions
from ictl.service.web.app import STATIC, render, route

CHART_POINTS = 100000  # readings fetched for one chart (reduced to one mean per pixel column)
CHART_SLICES = 40  # about 19 pixel columns each
NOT_PLOTTED = ("ts", "seq")  # the wall time and the reading counter: not measurements
WIPE_CONFIRM = 0x57495045  # "WIPE": the agent's wipe op refuses any other argument (ironclad.commands.OPS)
COMMANDS = {"read": (), "reboot": (), "interval": ("s",)}  # what the command form offers (wipe has its own)
ROLLOUT_ACTIONS = ("pause", "resume", "cancel")
OUTCOMES = ("",) + console.OUTCOMES  # a security event's outcome (docs/events.md); "" any


# ------------------------------------------------------------------ helpers
def when(ts):
    """A stored unix time as the pages show it (UTC)."""
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(ts)))


def ago(ts, now=None):
    if ts is None:
        return "never"
    s = max(0, int((now or time.time()) - float(ts)))
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return "%d %s ago" % (s // n, unit)
    return "%d s ago" % s


def _page(request, template, code=200, **ctx):
    ctx.setdefault("when", when)
    ctx.setdefault("ago", ago)
    body = render(request, template, **ctx)
    return body if code == 200 else (body, code)


def _bad(request, err, status=400):
    """A refused request: the reason on a page, nothing changed."""
    request.audit_result = {"ok": False, "error": str(err)}
    return _page(request, "error.html", code=status, status=status, message=str(err), reauth=False, next="/")


def _by(request):
    return request.user["username"]


def _done(request, result, back):
    """After an action: record its result for the audit layer, then show
    where it went (a redirect would lose the message)."""
    request.audit_result = result
    ok = bool(result.get("ok", True)) if isinstance(result, dict) else True
    return _page(request, "ui_done.html", code=200 if ok else 409, result=result, ok=ok, back=back)


def banner(db):
    """What the base template shows on every page: the open alarms."""
    return {"open_alarms": store.counts(db)["open_alarms"], "latest": store.alarms(db, open_only=True, limit=3)}


@route("/favicon.ico", methods=("GET",), permission=permissions.PUBLIC, session=False)
def favicon(request):
    """Browsers ask for /favicon.ico where a page names no icon (the chart
    or a timeline opened on its own): the same icon as base.html's link,
    not a 404 in the console."""
    path = os.path.join(STATIC, "ui", "favicon.svg")
    with open(path, "rb") as f:
        return Response(f.read(), mimetype="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


# ----------------------------------------------------------------- overview
@route("/", methods=("GET",), permission="fleet.view", nav="Fleet")
def overview(request):
    try:
        q = forms.text(request.args.get("q"), "search")
        status = forms.choice(request.args.get("status"), "status", forms.STATUSES, "")
        limit, offset = forms.page(request.args)
    except forms.FormError as e:
        return _bad(request, e)
    res = store.overview(request.db, q=q or None, status=status or None, limit=limit, offset=offset)
    return _page(request, "overview.html", q=q, status=status, statuses=forms.STATUSES, limit=limit,
                 offset=offset, total=res["total"], devices=res["devices"])


# ------------------------------------------------------------------ devices
def _device_or_404(request, device_id):
    try:
        device_id = forms.device_id(device_id)
    except forms.FormError as e:
        return None, _bad(request, e, 404)
    dev = store.device(request.db, device_id)
    if dev is None:
        return None, _bad(request, "no device %s" % device_id, 404)
    return dev, None


def _device_and_range(request, device_id):
    """(refusal or None, device, since, until, range name)."""
    dev, err = _device_or_404(request, device_id)
    if err:
        return err, None, 0, 0, ""
    try:
        return (None, dev) + forms.chart_range(request.args, time.time())
    except forms.FormError as e:
        return _bad(request, e), None, 0, 0, ""


@route("/devices/<device_id>", methods=("GET",), permission="fleet.view")
def device(request, device_id):
    err, dev, since, until, rng = _device_and_range(request, device_id)
    if err:
        return err
    db, did = request.db, dev["device_id"]
    return _page(request, "device.html", dev=dev, since=since, until=until, range=rng, ranges=forms.RANGES,
                 chart_query=_chart_query(request.args, rng),
                 events=store.events(db, device_id=did, limit=50, offset=0),
                 alarms=store.alarms(db, open_only=False, device_id=did, limit=20),
                 commands=store.commands(db, did), updates=store.update_reports(db, did),
                 cert=dev.get("cert"), commands_offered=COMMANDS)


def _chart_query(args, rng):
    if rng:
        return {"range": rng}
    return {"from": args.get("from", "")[:32], "to": args.get("to", "")[:32]}


def _chart_readings(db, device_id, since, until):
    """The range's readings in CHART_SLICES time slices: store.readings
    returns the newest `limit` of a range, so one call over 30 days would
    show only its last days; per slice, at most CHART_POINTS / CHART_SLICES
    (a slice fuller than that is drawn from its newest readings)."""
    step = (until - since) / CHART_SLICES
    per = CHART_POINTS // CHART_SLICES
    for i in range(CHART_SLICES):
        lo = since + i * step
        hi = until if i == CHART_SLICES - 1 else lo + step
        # readings() includes both ends: a reading exactly on a boundary
        # belongs to the later slice only.
        yield from (r for r in store.readings(db, device_id, lo, hi, per) if r["ts"] < hi or hi == until)


@route("/devices/<device_id>/chart.svg", methods=("GET",), permission="fleet.view")
def device_chart(request, device_id):
    err, dev, since, until, _ = _device_and_range(request, device_id)
    if err:
        return err
    series = {}
    for r in _chart_readings(request.db, dev["device_id"], since, until):
        for field, value in r["body"].items():
            if field not in NOT_PLOTTED:
                series.setdefault(field, []).append((r["ts"], value))
    svg = chart.render(series, since, until, title="readings of %s" % dev["device_id"])
    return Response(svg, mimetype="image/svg+xml")


@route("/devices/<device_id>/command", methods=("POST",), permission="device.command")
def device_command(request, device_id):
    dev, err = _device_or_404(request, device_id)
    if err:
        return err
    try:
        op = forms.choice(request.form.get("op"), "command", tuple(COMMANDS))
        args = {}
        if "s" in COMMANDS[op]:
            args["s"] = forms.integer(request.form.get("s"), "seconds", 1, 86400)
    except forms.FormError as e:
        return _bad(request, e)
    res = fleetops.send_command(request.db, dev["device_id"], op, args, _by(request))
    return _done(request, res, "/devices/%s" % dev["device_id"])


@route("/devices/<device_id>/wipe", methods=("POST",), permission="device.wipe", reauth=True)
def device_wipe(request, device_id):
    dev, err = _device_or_404(request, device_id)
    if err:
        return err
    # The device's id typed again: a wipe cannot be undone.
    if (request.form.get("confirm_id") or "").strip() != dev["device_id"]:
        return _bad(request, "type the device id %s to confirm the wipe" % dev["device_id"])
    res = fleetops.send_command(request.db, dev["device_id"], "wipe", {"confirm": WIPE_CONFIRM}, _by(request))
    return _done(request, res, "/devices/%s" % dev["device_id"])


# ------------------------------------------------------- events and alarms
@route("/events", methods=("GET",), permission="fleet.view", nav="Events")
def events(request):
    try:
        did = request.args.get("device", "").strip()
        did = forms.device_id(did) if did else None
        outcome = forms.choice(request.args.get("outcome"), "outcome", OUTCOMES, "")
        limit, offset = forms.page(request.args)
    except forms.FormError as e:
        return _bad(request, e)
    db = request.db
    rows = store.events(db, device_id=did, limit=limit + 1, offset=offset,  # one more: is there a next page?
                        outcome=outcome or None)
    return _page(request, "events.html", device=did or "", outcome=outcome, outcomes=OUTCOMES, limit=limit,
                 offset=offset, alarms=store.alarms(db, open_only=True), events=rows[:limit], more=len(rows) > limit)


@route("/alarms/<int:alarm_id>/ack", methods=("POST",), permission="alarms.ack")
def alarm_ack(request, alarm_id):
    res = fleet_alarms.acknowledge(request.db, alarm_id, _by(request))
    return _done(request, res, "/events")


# ----------------------------------------------------------------- rollouts
@route("/rollouts", methods=("GET",), permission="fleet.view", nav="Rollouts")
def rollouts(request):
    return _page(request, "rollouts.html", rollouts=store.rollouts(request.db))


@route("/rollouts/new", methods=("GET",), permission="rollout.create")
def rollout_new(request):
    return _page(request, "rollout_new.html", defaults=rollout.DEFAULTS)


def _targets(form):
    """The target pick (rollout.create's three kinds): devices whose id
    contains a text, a percentage of the fleet, or a list."""
    mode = forms.choice(form.get("mode"), "targets", ("filter", "percentage", "list"))
    if mode == "list":
        ids = forms.device_list(form.get("devices"))
        if not ids:
            raise forms.FormError("devices: name at least one device")
        return {"devices": ids}
    if mode == "percentage":
        return {"percentage": forms.number(form.get("percent"), "percentage", 1, 100)}
    return {"filter": forms.text(form.get("q"), "filter")}


def _params(form):
    """rollout.create's parameters from the form (thresholds entered in %)."""
    d = rollout.DEFAULTS
    p = {
        "name": forms.text(form.get("name"), "name", 100) or None,
        "canary": forms.integer(form.get("canary"), "canary group size", 1, 10000, d["canary"]),
        "rate": forms.choice(form.get("rate"), "rate", ("constant", "exponential"), d["rate"]),
        "factor": forms.number(form.get("factor"), "growth factor", 1.1, 10, d["factor"]),
        "group_size": forms.integer(form.get("group_size"), "group size", 1, 10000, d["group_size"]),
        "success_threshold": forms.number(form.get("success_threshold"), "success threshold", 1, 100,
                                          100 * d["success_threshold"]) / 100,
        "failure_threshold": forms.number(form.get("failure_threshold"), "failure threshold", 0, 99,
                                          100 * d["failure_threshold"]) / 100,
        "min_devices": forms.integer(form.get("min_devices"), "minimum devices", 1, 10000, d["min_devices"]),
        "group_timeout_s": forms.integer(form.get("group_timeout_s"), "group timeout", 5, 7 * 86400,
                                         int(d["group_timeout_s"])),
        "until": forms.choice(form.get("until"), "success means", tuple(rollout.UNTIL), d["until"]),
        "approvals": 1 if form.get("two_person") == "on" else 0,
    }
    return p


@route("/rollouts/new", methods=("POST",), permission="rollout.create")
def rollout_create(request):
    f = request.files.get("update")
    if f is None or not f.filename:
        return _bad(request, "choose the update file made by `ictl update create`")
    data = f.stream.read(rollout.MAX_UPLOAD + 1)  # rollout.unpack refuses more, with the reason
    f.stream.seek(0)  # the audit layer reads it after us (its size and SHA-256 go in the record)
    try:
        targets, params = _targets(request.form), _params(request.form)
    except forms.FormError as e:
        return _bad(request, e)
    try:
        res = rollout.create(request.db, data, targets, params, _by(request))
    except rollout.RolloutError as e:  # a malformed update or targets that match nothing
        return _bad(request, e)
    request.audit_result = res
    return _page(request, "ui_done.html", result=res, ok=True, back="/rollouts/%d" % res["id"])


def _rollout_or_404(request, rollout_id):
    r = store.rollout(request.db, rollout_id)
    if r is None:
        return None, _bad(request, "no rollout %d" % rollout_id, 404)
    return r, None


def progress(db, r):
    """A rollout's progress for its page and static/ui/poll.js: totals and
    per group succeeded / failed / pending (success as the rollout's
    params["until"] defines it; failed: rejected, rolled back, timed out)."""
    ok_states = rollout.UNTIL[r["params"].get("until", "confirmed")]
    groups = {g["idx"]: {"index": g["idx"], "size": g["size"], "state": g["state"], "ok": 0, "failed": 0}
              for g in r["groups"]}
    for d in r["devices"]:
        g = groups.get(d["group_idx"])
        if g is not None and d["state"] in ok_states:
            g["ok"] += 1
        elif g is not None and d["state"] in rollout.FAILED:
            g["failed"] += 1
    for g in groups.values():
        g["pending"] = g["size"] - g["ok"] - g["failed"]
    gl = [groups[i] for i in sorted(groups)]
    devices = [{"device_id": d["device_id"], "group": d["group_idx"], "state": d["state"], "pct": d["pct"],
                "reason": d["reason"] or "", "updated": when(d["updated_at"]) if d["updated_at"] else ""}
               for d in r["devices"]]
    return {"id": r["id"], "state": r["state"], "stop_reason": r["stop_reason"], "total": len(r["devices"]),
            "done": sum(g["ok"] for g in gl), "failed": sum(g["failed"] for g in gl), "groups": gl,
            "devices": devices}


@route("/rollouts/<int:rollout_id>", methods=("GET",), permission="fleet.view")
def rollout_page(request, rollout_id):
    r, err = _rollout_or_404(request, rollout_id)
    if err:
        return err
    return _page(request, "rollout.html", r=r, progress=progress(request.db, r))


@route("/rollouts/<int:rollout_id>/status.json", methods=("GET",), permission="fleet.view")
def rollout_status(request, rollout_id):
    """What static/ui/poll.js reads every few seconds (the live progress)."""
    r, err = _rollout_or_404(request, rollout_id)
    if err:
        return err
    return Response(json.dumps(progress(request.db, r)), mimetype="application/json")


@route("/rollouts/<int:rollout_id>/timeline.svg", methods=("GET",), permission="fleet.view")
def rollout_timeline(request, rollout_id):
    r, err = _rollout_or_404(request, rollout_id)
    if err:
        return err
    return Response(rollout.timeline_svg(request.db, rollout_id), mimetype="image/svg+xml")


def _act(request, action, rollout_id):
    """One rollout action; a refusal (wrong state, two-person rule) is a
    page saying why, audited as not done."""
    _, err = _rollout_or_404(request, rollout_id)
    if err:
        return err
    try:
        res = action(request.db, rollout_id, _by(request))
    except rollout.RolloutError as e:
        return _bad(request, e, 409)
    return _done(request, res, "/rollouts/%d" % rollout_id)


@route("/rollouts/<int:rollout_id>/approve", methods=("POST",), permission="rollout.approve")
def rollout_approve(request, rollout_id):
    return _act(request, rollout.approve, rollout_id)


@route("/rollouts/<int:rollout_id>/start", methods=("POST",), permission="rollout.start", reauth=True)
def rollout_start(request, rollout_id):
    return _act(request, rollout.start, rollout_id)


@route("/rollouts/<int:rollout_id>/control", methods=("POST",), permission="rollout.control")
def rollout_control(request, rollout_id):
    try:
        action = forms.choice(request.form.get("action"), "action", ROLLOUT_ACTIONS)
    except forms.FormError as e:
        return _bad(request, e)
    return _act(request, getattr(rollout, action), rollout_id)


# ------------------------------------------------ provisioning, certificates
@route("/provisioning", methods=("GET",), permission="fleet.view", nav="Provisioning")
def provisioning(request):
    return _page(request, "provisioning.html", records=store.provisioning_records(request.db))


@route("/certificates", methods=("GET",), permission="fleet.view", nav="Certificates")
def certificates(request):
    return _page(request, "certificates.html", certs=store.certificates(request.db))


@route("/certificates/<device_id>/revoke", methods=("POST",), permission="cert.revoke", reauth=True)
def certificate_revoke(request, device_id):
    try:
        device_id = forms.device_id(device_id)
    except forms.FormError as e:
        return _bad(request, e, 404)
    if (request.form.get("confirm_id") or "").strip() != device_id:
        return _bad(request, "type the device id %s to confirm the revocation" % device_id)
    return _done(request, fleetops.revoke(request.db, device_id, _by(request)), "/certificates")


# -------------------------------------------------------------- audit trail
@route("/audit", methods=("GET",), permission="audit.view", nav="Audit")
def audit_trail(request):
    try:
        who = forms.text(request.args.get("who"), "who")
        action = forms.text(request.args.get("action"), "action")
        check = forms.choice(request.args.get("verify"), "verify", ("", "1"), "")
        limit, offset = forms.page(request.args)
    except forms.FormError as e:
        return _bad(request, e)
    rows = audit.entries(request.db, limit + 1, offset, who=who or None, action=action or None)
    return _page(request, "audit.html", rows=rows[:limit], more=len(rows) > limit, who=who, action=action,
                 limit=limit, offset=offset, pretty=_pretty,
                 # the whole chain is walked: on request, not on every view of a long trail
                 check=audit.verify(request.db) if check else None)


def _pretty(value):
    """Parameters and results of an audit record as one line of JSON text
    (escaped by the template like everything else)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True, default=str)


# -------------------------------------------------------------------- users
@route("/users", methods=("GET",), permission="users.manage", nav="Users")
def users(request):
    return _page(request, "users.html", users=accounts.list_users(request.db), roles=permissions.ROLES)


@route("/users/new", methods=("POST",), permission="users.manage", reauth=True)
def user_create(request):
    try:
        name = forms.text(request.form.get("username"), "username", 64, required=True)
        role = forms.choice(request.form.get("role"), "role", permissions.ROLES)
    except forms.FormError as e:
        return _bad(request, e)
    try:
        _, token = accounts.create_user(request.db, name, role)
    except accounts.AccountError as e:
        return _bad(request, e)
    # The enrolment link is shown once, to this administrator, and not
    # audited (the audit layer records that a user was created, not the token).
    request.audit_result = {"ok": True, "username": name, "role": role}
    return _page(request, "user_link.html", username=name, kind="enrolment",
                 link=request.host_url.rstrip("/") + "/enrol/" + token)


USER_ACTIONS = ("role", "disable", "enable", "unlock", "reset")
_USER_ID = re.compile(r"^u_[0-9a-f]{16}$")  # accounts._user_id()


@route("/users/<user_id>", methods=("POST",), permission="users.manage", reauth=True)
def user_change(request, user_id):
    db = request.db
    try:
        action = forms.choice(request.form.get("action"), "action", USER_ACTIONS)
        role = forms.choice(request.form.get("role"), "role", permissions.ROLES) if action == "role" else None
    except forms.FormError as e:
        return _bad(request, e)
    target = accounts.get_user(db, user_id) if _USER_ID.match(user_id) else None
    if target is None:
        return _bad(request, "no such user", 404)
    try:
        if action == "role":
            accounts.set_role(db, user_id, role)
        elif action in ("disable", "enable"):
            accounts.set_disabled(db, user_id, action == "disable")
        elif action == "unlock":
            accounts.unlock(db, user_id)
        else:
            token = accounts.issue_reset_token(db, user_id)
    except accounts.AccountError as e:
        return _bad(request, e, 409)
    if action == "reset":
        request.audit_result = {"ok": True, "user": target["username"], "action": "reset link issued"}
        return _page(request, "user_link.html", username=target["username"], kind="password reset",
                     link=request.host_url.rstrip("/") + "/reset/" + token)
    return _done(request, {"ok": True, "user": target["username"], "action": action}, "/users")
