"""Operator actions on devices: authenticated commands (the console's
command path: ictl.console.Console.command seals them under the device's
fleet-to-device key, the counter kept in the database with the rest of the
console's memory) and certificate revocation (ictl.ca.revoke: inventory,
CRL, broker reload). Also the import of the CA inventory and provisioning
log into the database for the pages.

    fleetops.configure(Ops(pki_dir, fleet_key, broker_host, broker_port, prefix, broker_dir))
    fleetops.send_command(db, "dev-0001", "interval", {"s": 10}, by="alice")
    fleetops.revoke(db, "dev-0001", by="alice")

Every action takes `by` and returns a result dict ({"ok": False,
"reason": ...} when refused: nothing changed); none audits itself."""
import hashlib
import json
import os
import ssl
import threading
import time

from ictl import ToolError, pki
from ictl import broker as fleet_broker
from ictl import ca as fleet_ca
from ictl import provision as prov
from ictl.console import Console, device_state_from_json, device_state_json

SERVICE_ID = "fleet-service"     # the identity commands are published as (in the broker ACL)
# The agent's commands and their integer arguments (lib/ironclad/ironclad/commands.py OPS):
# checked here too so a refused command never reaches a device.
OPS = {"read": {}, "interval": {"s": (1, 86400)}, "reboot": {}, "update": {},
       "wipe": {"confirm": (0x57495045, 0x57495045)}}
_ops = None


class Ops:
    """What the actions need: the fleet PKI directory (CA, inventory), the
    fleet data key, the broker address and (optionally) the state directory
    of a broker started by ictl (for the CRL reload)."""

    def __init__(self, pki_dir, fleet_key, host, port, prefix="ironclad", broker_dir=None, client_id=SERVICE_ID):
        self.pki_dir = pki_dir
        self.fleet_key = fleet_key
        self.host, self.port, self.prefix = host, port, prefix
        self.broker_dir = broker_dir
        self.client_id = client_id
        self.ca_path = os.path.join(pki_dir, pki.CA_CERT)
        self._client = None
        self._lock = threading.Lock()

    def credentials(self):
        kp, cp = os.path.join(self.pki_dir, self.client_id + ".key"), os.path.join(self.pki_dir, self.client_id + ".crt")
        if not (os.path.exists(kp) and os.path.exists(cp)):
            ca = pki.load_ca(self.pki_dir)
            k = pki.new_key()
            pki.write_key_pem(kp, k)
            pki.write_cert_pem(cp, pki.issue_console_cert(ca, k.public_key(), name=self.client_id))
        return kp, cp

    def console(self):
        kp, cp = self.credentials()
        return Console(self.host, self.port, self.ca_path, cp, kp, self.fleet_key, self.prefix, None, self.client_id)

    def publish(self, topic, msg, timeout=10):
        import paho.mqtt.client as mqtt
        with self._lock:
            if self._client is None:
                kp, cp = self.credentials()
                c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
                c.tls_set(ca_certs=self.ca_path, certfile=cp, keyfile=kp, cert_reqs=ssl.CERT_REQUIRED)
                up = threading.Event()
                c.on_connect = lambda cl, ud, fl, rc, pr: up.set() if not rc.is_failure else None
                try:
                    c.connect(self.host, self.port, keepalive=30)
                except (OSError, ssl.SSLError) as e:
                    raise ToolError("cannot reach the broker at %s:%d: %s" % (self.host, self.port, e)) from None
                c.loop_start()
                if not up.wait(timeout):
                    c.loop_stop()
                    raise ToolError("no MQTT session as %s (is it an operator in the broker ACL?)" % self.client_id)
                self._client = c
            info = self._client.publish(topic, msg, qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ToolError("the broker did not acknowledge the command within %ds" % timeout)

    def close(self):
        with self._lock:
            c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()


def configure(ops):
    """Set the process's Ops (cmd_serve does; tests too). Returns the old one."""
    global _ops
    old, _ops = _ops, ops
    return old


def _need():
    if _ops is None:
        raise ToolError("fleet operations are not configured (ictl serve configures them)")
    return _ops


def check_command(cmd, args):
    """Refuse what the agent would refuse, with the reason: unknown op,
    missing, extra or out-of-range arguments. Returns the args as ints."""
    if cmd not in OPS:
        raise ToolError("unknown command %r (have: %s)" % (cmd, ", ".join(sorted(OPS))))
    args = dict(args or {})
    want = OPS[cmd]
    extra = sorted(set(args) - set(want))
    if extra:
        raise ToolError("command %s takes no argument %s" % (cmd, ", ".join(repr(e) for e in extra)))
    out = {}
    for name, (lo, hi) in want.items():
        if name not in args:
            raise ToolError("command %s needs %s" % (cmd, name))
        try:
            v = int(args[name], 0) if isinstance(args[name], str) else int(args[name])
        except (TypeError, ValueError):
            raise ToolError("command %s: %s must be an integer" % (cmd, name)) from None
        if isinstance(args[name], bool) or not lo <= v <= hi:
            raise ToolError("command %s: %s must be %s" % (cmd, name, lo if lo == hi else "%d..%d" % (lo, hi)))
        out[name] = v
    return out


def send_command(db, device_id, cmd, args, by):
    """Seal and publish a command (QoS 1). {"ok", "device", "command",
    "counter"} or {"ok": False, "reason"}; the reply arrives through ingest
    (store.commands shows it beside the command)."""
    ops = _need()
    try:
        pki.validate_device_id(device_id)
        args = check_command(cmd, args)
    except ToolError as e:
        return {"ok": False, "reason": str(e)}
    con = ops.console()
    lock = " FOR UPDATE" if db.engine == "postgresql" else ""
    with db.transaction():
        row = db.one("SELECT console_state FROM devices WHERE device_id = ?" + lock, (device_id,))
        if row is None or not row["console_state"]:
            return {"ok": False, "reason": "device %s is unknown (no hello received)" % device_id}
        con.devices[device_id] = device_state_from_json(json.loads(row["console_state"]))
        try:
            topic, msg, ctr = con.command(device_id, cmd, **args)
        except ToolError as e:
            return {"ok": False, "reason": str(e)}
        # the counter is stored before the command leaves (it must keep rising)
        db.execute("UPDATE devices SET console_state = ? WHERE device_id = ?",
                   (json.dumps(device_state_json(con.devices[device_id]), sort_keys=True), device_id))
        db.execute("INSERT INTO commands (device_id, op, args, counter, sent_by, sent_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (device_id, cmd, json.dumps(args, sort_keys=True), ctr, by, time.time()))
    try:
        ops.publish(topic, msg)
    except ToolError as e:
        return {"ok": False, "device": device_id, "command": cmd, "counter": ctr, "reason": str(e)}
    return {"ok": True, "device": device_id, "command": cmd, "counter": ctr}


def revoke(db, device_id, by, reason="decommissioned"):
    """Revoke the device's live certificates (ictl.ca.revoke: inventory +
    CRL) and have an ictl-started broker reload its CRL."""
    ops = _need()
    try:
        pki.validate_device_id(device_id)
        rows = fleet_ca.revoke(pki.load_ca(ops.pki_dir), device_id, reason=reason, operator=by)
    except ToolError as e:
        return {"ok": False, "reason": str(e)}
    reloaded = bool(ops.broker_dir) and fleet_broker.signal_reload(ops.broker_dir)
    sync_pki(db, ops.pki_dir)
    return {"ok": True, "device": device_id, "serials": [r["serial"] for r in rows], "reason": reason,
            "broker_reloaded": reloaded}


def sync_pki(db, pki_dir, log_path=None):
    """Copy the CA inventory (certificates) and the provisioning log
    (log_path, default <pki_dir>/provision.jsonl) into the database;
    idempotent. Returns (certificates, provisioning records added)."""
    inv = fleet_ca.Inventory(os.path.join(pki_dir, fleet_ca.INVENTORY))
    certs = inv.devices()
    with db.transaction():
        for serial, r in certs.items():
            db.execute("INSERT INTO certificates (serial, device_id, fingerprint, not_after, status, reason, issued_at, "
                       "revoked_at, operator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO UPDATE SET "
                       "status = excluded.status, reason = excluded.reason, revoked_at = excluded.revoked_at",
                       (serial, r["device_id"], r.get("fingerprint"), r.get("not_after"), r["status"], r.get("reason"),
                        r.get("time"), r.get("revoked"), r.get("operator")))
    n = 0
    path = log_path or os.path.join(pki_dir, prov.LOG)
    if os.path.exists(path):
        with open(path) as f, db.transaction():
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict):
                    continue
                n += db.execute("INSERT INTO provisioning_records (digest, device_id, at, outcome, operator, record) "
                                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                (hashlib.sha256(line.encode()).hexdigest(), str(row.get("device_id", ""))[:64],
                                 str(row.get("time", "")), str(row.get("outcome", "")), str(row.get("operator", "")),
                                 line))
    return len(certs), n
