"""Retention: how long each kind of data is kept, enforced continuously.

    policy = parse_policy({"readings": "30d", "events": "365d", "audit": "400d"})
    Retention(db_url, policy).start()     # in `ictl serve`; enforce() once

Kinds (docs/service.md "Retention and privacy"): readings, events
(security events), audit (the operator audit trail: pruned only through
ictl.service.audit.prune, which keeps the remaining chain verifiable),
alarms (acknowledged ones), update_reports, commands (with their
replies). A duration is N followed by s, m, h or d; "forever" keeps a kind.
Rows go in batches so a large backlog never holds a long lock."""
import re
import time

from ictl import ToolError
from ictl.service.periodic import Periodic

DEFAULTS = {"readings": "30d", "events": "365d", "audit": "365d", "alarms": "365d",
            "update_reports": "365d", "commands": "90d"}
# kind -> [(table, time column, extra condition)]
TABLES = {
    "readings": [("readings", "received_at", "")],
    "events": [("events", "received_at", "")],
    "alarms": [("alarms", "raised_at", " AND acked_at IS NOT NULL")],
    "update_reports": [("update_reports", "received_at", "")],
    "commands": [("commands", "sent_at", ""), ("replies", "received_at", "")],
}
BATCH = 5000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text):
    """'30d' -> seconds; 'forever' -> None. ToolError otherwise."""
    t = str(text).strip().lower()
    if t in ("forever", "never", "keep"):
        return None
    m = re.fullmatch(r"(\d{1,6})\s*([smhd])", t)
    if not m or int(m.group(1)) == 0:
        raise ToolError("retention %r: give a duration like 30d, 12h, 90m (or 'forever')" % text)
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_policy(overrides=None):
    """{kind: seconds or None} from DEFAULTS and overrides {kind: text}."""
    out = {}
    for kind, text in dict(DEFAULTS, **{k: v for k, v in (overrides or {}).items() if v is not None}).items():
        if kind not in DEFAULTS:
            raise ToolError("retention: unknown kind %r (have: %s)" % (kind, ", ".join(sorted(DEFAULTS))))
        out[kind] = parse_duration(text)
    return out


def describe(policy):
    """Human text per kind, for the privacy notice and `ictl serve` start-up."""
    def d(s):
        if s is None:
            return "kept until deleted by an operator"
        for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if s % n == 0:
                return "%d %s" % (s // n, unit)
        return "%d seconds" % s
    return {k: d(v) for k, v in policy.items()}


def enforce(db, policy, now=None):
    """Delete everything older than its kind's limit. Returns {kind: rows}."""
    now = now or time.time()
    done = {}
    for kind, keep in policy.items():
        if keep is None:
            continue
        cutoff = now - keep
        if kind == "audit":
            from ictl.service import audit
            done[kind] = audit.prune(db, cutoff)
            continue
        n = 0
        for table, col, extra in TABLES[kind]:
            while True:
                k = db.execute("DELETE FROM " + table + " WHERE id IN (SELECT id FROM " + table + " WHERE "
                               + col + " < ?" + extra + " LIMIT ?)", (cutoff, BATCH))
                n += max(k, 0)
                if k < BATCH:
                    break
        done[kind] = n
    db.execute("INSERT INTO service_state (name, value, updated_at) VALUES ('retention', ?, ?) "
               "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
               (repr(sorted(done.items())), now))
    return done


class Retention(Periodic):
    """enforce() every interval seconds in a thread (several service
    instances may each run one: the deletes are idempotent)."""

    name = "retention"

    def __init__(self, db_url, policy, interval=60.0):
        super().__init__(db_url, interval)
        self.policy = policy

    def step(self, db):
        enforce(db, self.policy)
