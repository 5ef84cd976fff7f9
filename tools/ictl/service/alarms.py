"""Alarms: a check on what a device sent failed (the console's checks), or
a device reports something an operator must know (a rollback, a forged
command). Stored in the alarms table, shown in the console, and sent to a
configurable webhook (JSON POST, optionally HMAC-signed).

Kinds: chain_gap (security-event records missing, altered, rewritten or
replayed), forgery (a payload that does not open, names another device,
or a hello whose certificate does not check), key_change (a known device
presents another public key), replay (a sealed message with an old
counter), rollback (a device rolled an update back, or refused an image
as a downgrade/rollback), other."""
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request

from ictl import ToolError
from ictl.service.periodic import Periodic

KINDS = ("chain_gap", "forgery", "key_change", "replay", "rollback", "other")
ROLLBACK_REASONS = ("rollback", "downgrade", "rolled_back")
WEBHOOK_TRIES = 5
WEBHOOK_BACKOFF_S = 10      # a failed delivery is tried again after 10 s x the tries so far
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_BODY_MAX = 8192


def classify(text):
    """The alarm kind of a console alarm text (tools/ictl/console.py)."""
    t = text.lower()
    if "replayed or reordered" in t:
        return "replay"
    if "event" in t and any(w in t for w in ("missing", "chain", "rewritten", "altered", "again after")):
        return "chain_gap"
    if any(w in t for w in ("does not open", "names device", "certificate", "not cbor", "cose",
                            "no key epoch", "malformed", "hello without", "bad key epoch")):
        return "forgery"
    return "other"


def event_alarm(rec):
    """(kind, text) when a security event itself needs an operator, else None."""
    if rec["reason"] in ROLLBACK_REASONS:
        return "rollback", "device reports %s/%s (%s)" % (rec["kind"], rec["reason"], rec["outcome"])
    if rec["reason"] == "forged":
        return "forgery", "device refused a forged %s (%s)" % (rec["kind"], rec["outcome"])
    return None


def raise_alarm(db, device_id, kind, text, source=None, now=None):
    """Store an alarm (once per source). Returns its id, or None when this
    source had raised it already."""
    if kind not in KINDS:
        kind = "other"
    row = db.one("INSERT INTO alarms (device_id, kind, text, raised_at, source) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT DO NOTHING RETURNING id",
                 (device_id, kind, text[:500], now or time.time(), source))
    return row["id"] if row else None


def ack(db, alarm_id, by):
    """Acknowledge an open alarm: {'ok': bool, 'id', 'reason'?}."""
    n = db.execute("UPDATE alarms SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                   (time.time(), by, int(alarm_id)))
    return {"ok": n == 1, "id": int(alarm_id)} if n == 1 else \
        {"ok": False, "id": int(alarm_id), "reason": "no such open alarm"}


acknowledge = ack     # the name the pages use


def check_webhook_url(url):
    """The webhook URL, or ToolError: http(s) with a host, no credentials in it."""
    p = urllib.parse.urlsplit(url or "")
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ToolError("webhook %r: give an http:// or https:// URL" % url)
    if p.username or p.password:
        raise ToolError("webhook URL must not carry credentials: use --webhook-secret for signing")
    return url


def payload(alarm):
    return {"type": "ironclad.alarm", "id": alarm["id"], "device": alarm["device_id"], "kind": alarm["kind"],
            "text": alarm["text"], "raised_at": alarm["raised_at"]}


class Webhook(Periodic):
    """Delivers pending alarms to url (a thread; several service instances
    may run one each: an alarm is claimed by one UPDATE before it is sent).
    Body: JSON; with a secret, header X-Ironclad-Signature: sha256=<HMAC of
    the body>. A failed delivery is retried, WEBHOOK_TRIES times in all,
    further apart each time."""

    name = "webhook"

    def __init__(self, db_url, url, secret=None, interval=0.5, timeout=WEBHOOK_TIMEOUT_S):
        super().__init__(db_url, interval)
        self.url = check_webhook_url(url)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.timeout = timeout
        self.sent = 0

    def _post(self, body):
        data = json.dumps(body, sort_keys=True).encode()
        req = urllib.request.Request(self.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "ironclad-service"})
        if self.secret:
            req.add_header("X-Ironclad-Signature", "sha256=" + hmac.new(self.secret, data, hashlib.sha256).hexdigest())
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            r.read(WEBHOOK_BODY_MAX)
            return r.status

    def deliver_pending(self, db, now=None):
        """Send every pending alarm that is due once (a failed one waits
        WEBHOOK_BACKOFF_S x its tries); returns how many were delivered."""
        done = 0
        now = now or time.time()
        for a in db.query("SELECT * FROM alarms WHERE webhook_state = 'pending' AND (webhook_at IS NULL OR "
                          "webhook_at + ? * webhook_tries <= ?) ORDER BY id LIMIT 100", (WEBHOOK_BACKOFF_S, now)):
            if db.execute("UPDATE alarms SET webhook_state = 'sending' WHERE id = ? AND webhook_state = 'pending'",
                          (a["id"],)) != 1:
                continue    # another instance took it
            try:
                self._post(payload(a))
                state = "sent"
                done += 1
            except (urllib.error.URLError, OSError, ValueError):
                state = "pending" if a["webhook_tries"] + 1 < WEBHOOK_TRIES else "failed"
            db.execute("UPDATE alarms SET webhook_state = ?, webhook_tries = webhook_tries + 1, webhook_at = ? "
                       "WHERE id = ?", (state, now, a["id"]))
        self.sent += done
        return done

    def step(self, db):
        self.deliver_pending(db)
