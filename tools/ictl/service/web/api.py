"""The JSON API (/api/v1/...): bearer tokens with scopes, the same
permissions as the roles (permissions.MATRIX), every change audited by the
framework (web.app._api_call). Documented in docs/console.md ("JSON API")."""
from ictl.service import audit
from ictl.service.web import permissions
from ictl.service.web.app import route

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
