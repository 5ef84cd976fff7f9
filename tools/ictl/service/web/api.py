"""The JSON API (/api/v1/...): bearer tokens with scopes, the same
permissions as the roles (permissions.MATRIX), every change audited by the
framework (web.app._api_call). Documented in docs/console.md ("JSON API")."""
import json

from ictl.service import audit
from ictl.service.web import permissions
from ictl.service.web.app import ApiError, route

P = permissions


@route("/api/v1/whoami", permission=P.AUTHENTICATED, api=True)
def whoami(request):
    t = request.token
    return {"user": request.user["username"], "role": request.user["role"], "token": t["id"],
            "scopes": sorted(request.api_scopes), "expires_at": t["expires_at"]}


@route("/api/v1/audit", permission="audit.view", api=True)
def audit_entries(request):
    a = request.args
    return {"entries": audit.entries(request.db, _int(a.get("limit"), 100), _int(a.get("offset"), 0),
                                     who=a.get("who"), action=a.get("action"))}


@route("/api/v1/audit/verify", permission="audit.view", api=True)
def audit_verify(request):
    return audit.verify(request.db)


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# ------------------------------------------------------------- fleet reads

def _forms():
    from ictl.service.ui import forms      # UI's validators: one set for pages and API
    return forms


def _store():
    from ictl.service import store
    return store


def _checked(fn, *args):
    """Run a validator; its FormError becomes a 400 with the message."""
    forms = _forms()
    try:
        return fn(*args)
    except forms.FormError as e:
        raise ApiError(str(e)) from None


def _page(request):
    return _checked(_forms().page, request.args)


@route("/api/v1/devices", permission="fleet.view", api=True)
def devices(request):
    forms = _forms()
    q = _checked(forms.text, request.args.get("q"), "q")
    status = _checked(forms.choice, request.args.get("status"), "status", forms.STATUSES, "")
    limit, offset = _page(request)
    return _store().overview(request.db, q=q or None, status=status or None, limit=limit, offset=offset)


def _device(request, device_id):
    did = _checked(_forms().device_id, device_id)
    dev = _store().device(request.db, did)
    if dev is None:
        raise ApiError("no such device", 404)
    return dev


@route("/api/v1/devices/<device_id>", permission="fleet.view", api=True)
def device(request, device_id):
    return _device(request, device_id)


@route("/api/v1/devices/<device_id>/readings", permission="fleet.view", api=True)
def readings(request, device_id):
    forms = _forms()
    dev = _device(request, device_id)
    since, until = (_checked(forms.number, request.args[k], k, 0, 1e10) if request.args.get(k) else None
                    for k in ("since", "until"))
    limit = _checked(forms.integer, request.args.get("limit"), "limit", 1, 10000, 1000)
    return {"device_id": dev["device_id"],
            "readings": _store().readings(request.db, dev["device_id"], since, until, limit)}


@route("/api/v1/events", permission="fleet.view", api=True)
def events(request):
    did = request.args.get("device")
    did = _checked(_forms().device_id, did) if did else None
    limit, offset = _page(request)
    return {"events": _store().events(request.db, device_id=did, limit=limit, offset=offset)}


@route("/api/v1/alarms", permission="fleet.view", api=True)
def alarms(request):
    open_only = request.args.get("all") not in ("1", "true")
    limit, offset = _page(request)
    return {"alarms": _store().alarms(request.db, open_only=open_only, limit=limit, offset=offset)}


@route("/api/v1/alarms/<int:alarm_id>/ack", methods=("POST",), permission="alarms.ack", api=True)
def alarm_ack(request, alarm_id):
    from ictl.service import alarms as alarms_mod
    return alarms_mod.ack(request.db, alarm_id, _by(request))


# ------------------------------------------------------------- actions

def _by(request):
    return request.user["username"]


def _body(request):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("a JSON object body is expected")
    return body


def _fleetops():
    from ictl.service import fleetops
    return fleetops


@route("/api/v1/devices/<device_id>/commands", methods=("POST",), permission="device.command", api=True)
def command(request, device_id):
    dev = _device(request, device_id)
    body = _body(request)
    op = body.get("op")
    if op not in ("read", "reboot", "interval"):
        raise ApiError("op: read, reboot or interval (wipe has its own call)")
    args = body.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in args.values()):
        raise ApiError("args: an object of integers")
    return _fleetops().send_command(request.db, dev["device_id"], op, args, _by(request))


@route("/api/v1/devices/<device_id>/wipe", methods=("POST",), permission="device.wipe", api=True)
def wipe(request, device_id):
    dev = _device(request, device_id)
    if _body(request).get("confirm_id") != dev["device_id"]:
        raise ApiError("confirm_id: the device id again (a wipe cannot be undone)")
    from ictl.service.ui.pages import WIPE_CONFIRM
    return _fleetops().send_command(request.db, dev["device_id"], "wipe", {"confirm": WIPE_CONFIRM}, _by(request))


@route("/api/v1/certificates/<device_id>/revoke", methods=("POST",), permission="cert.revoke", api=True)
def revoke(request, device_id):
    did = _checked(_forms().device_id, device_id)
    if _body(request).get("confirm_id") != did:
        raise ApiError("confirm_id: the device id again")
    return _fleetops().revoke(request.db, did, _by(request))


@route("/api/v1/rollouts", permission="fleet.view", api=True)
def rollouts(request):
    limit, offset = _page(request)
    return {"rollouts": _store().rollouts(request.db, limit=limit, offset=offset)}


def _rollout_mod():
    from ictl.service import rollout
    return rollout


@route("/api/v1/rollouts/<int:rollout_id>", permission="fleet.view", api=True)
def rollout_status(request, rollout_id):
    r = _store().rollout(request.db, rollout_id)
    if r is None:
        raise ApiError("no such rollout", 404)
    r.pop("update_archive", None)
    return r


@route("/api/v1/rollouts", methods=("POST",), permission="rollout.create", api=True)
def rollout_create(request):
    """Body: the update archive (tar of `ictl update create` output) as
    application/octet-stream; targets and params as query parameters
    `targets` and `params` (JSON objects)."""
    try:
        targets = json.loads(request.args.get("targets", ""))
        params = json.loads(request.args.get("params", "{}"))
    except ValueError:
        raise ApiError("targets and params: JSON objects in the query") from None
    mod = _rollout_mod()
    try:
        return mod.create(request.db, request.get_data(cache=True), targets, params, _by(request))
    except mod.RolloutError as e:
        raise ApiError(str(e)) from None


def _rollout_action(name, permission):
    def handler(request, rollout_id):
        mod = _rollout_mod()
        try:
            return getattr(mod, name)(request.db, rollout_id, _by(request))
        except mod.RolloutError as e:
            raise ApiError(str(e), 409) from None
    handler.__name__ = "rollout_" + name
    handler.__qualname__ = handler.__name__
    return route("/api/v1/rollouts/<int:rollout_id>/" + name, methods=("POST",), permission=permission,
                 api=True, action="rollout." + name)(handler)


for _name, _perm in (("approve", "rollout.approve"), ("start", "rollout.start"), ("pause", "rollout.control"),
                     ("resume", "rollout.control"), ("cancel", "rollout.control")):
    _rollout_action(_name, _perm)
