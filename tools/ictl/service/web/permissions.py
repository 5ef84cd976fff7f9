"""Roles and the permission matrix of the web console and the JSON API.

One table, written down here and in docs/console.md ("Roles and
permissions"), enforced on every route: a route names exactly one
permission when it is registered (web.app.route), and the request is refused
with 403 before its handler runs unless the caller's role holds it. API
tokens carry a subset of their owner's permissions (their scopes); at each
call the effective set is scopes & the owner's role now, so demoting a user
also narrows the tokens they made.

PUBLIC and AUTHENTICATED are not permissions a role can lack: PUBLIC routes
(login, enrolment with a token, health, static files) need no session,
AUTHENTICATED ones (own account, logout, own API tokens) any signed-in user.
"""
PUBLIC = "public"
AUTHENTICATED = "authenticated"

ROLES = ("viewer", "operator", "administrator")

# permission -> (what it allows, roles holding it, needs re-authentication)
MATRIX = {
    "fleet.view": ("read the overview, devices, readings, events, alarms, rollouts, "
                   "provisioning records and certificates", ROLES, False),
    "alarms.ack": ("acknowledge an alarm", ("operator", "administrator"), False),
    "device.command": ("send a non-destructive command to a device",
                       ("operator", "administrator"), False),
    "device.wipe": ("remote wipe of a device", ("operator", "administrator"), True),
    "cert.revoke": ("revoke a device certificate", ("administrator",), True),
    "rollout.create": ("upload an update and create a rollout", ("operator", "administrator"), False),
    "rollout.approve": ("approve another operator's rollout (two-person rule)",
                        ("operator", "administrator"), False),
    "rollout.start": ("start a rollout", ("operator", "administrator"), True),
    "rollout.control": ("pause, resume or cancel a rollout", ("operator", "administrator"), False),
    "audit.view": ("read, export and verify the operator audit trail", ("administrator",), False),
    "users.manage": ("create users, change roles, disable, unlock, issue reset links",
                     ("administrator",), True),
}

# Permissions whose actions ask for password + TOTP again (issue 16: wipe,
# revoke, rollout start, user changes). An API token can hold one only if it
# was made with a fresh re-authentication, and then lives at most an hour.
REAUTH = frozenset(p for p, (_, _, r) in MATRIX.items() if r)


def permissions_of(role):
    """The set of permissions a role holds (empty for an unknown role)."""
    return frozenset(p for p, (_, roles, _) in MATRIX.items() if role in roles)


def allowed(role, permission):
    """True if `role` may use a route that requires `permission`."""
    if permission == PUBLIC:
        return True
    if role not in ROLES:
        return False
    if permission == AUTHENTICATED:
        return True
    entry = MATRIX.get(permission)
    if entry is None:               # a typo in a route must not open it
        raise KeyError("unknown permission %r" % (permission,))
    return role in entry[1]


def check_permission_name(permission):
    if permission not in (PUBLIC, AUTHENTICATED) and permission not in MATRIX:
        raise KeyError("unknown permission %r (see ictl/service/web/permissions.py)" % (permission,))
    return permission


def markdown_table():
    """The matrix as the Markdown table docs/console.md carries (a test
    checks the document against this)."""
    lines = ["| permission | allows | %s | re-auth |" % " | ".join(ROLES),
             "| --- | --- | %s | --- |" % " | ".join("---" for _ in ROLES)]
    for p, (what, roles, reauth) in MATRIX.items():
        lines.append("| `%s` | %s | %s | %s |" % (
            p, what, " | ".join("yes" if r in roles else "no" for r in ROLES),
            "yes" if reauth else "no"))
    return "\n".join(lines)
