# A compromised device for the console's escaping tests (MicroPython;
# tests/host/test_service_pages.py): it holds a real key and certificate,
# so everything it sends opens and checks, but what it says is hostile to a
# browser: security events whose kind, reason and detail are script, HTML,
# SVG and template text (recorded with ironclad.events, sent by
# ironclad.telemetry.send_events, as the agent does), readings whose field
# names are such text (a Sealer given them as its allowlist), and one
# reading with a string value (sealed by hand: the agent's Sealer only
# sends numbers). Talks to a real mosquitto over mutual TLS.
#
#   micropython -c "import service_hostile_peer; service_hostile_peer.main('cfg.json')"
#
# cfg.json: dir (ca.der, cert.der, key.der, fleet.pub), device_id, host,
# port, prefix, events (a directory), fields, events_spec ([kind, reason,
# outcome, detail] lists), text_value, update_id, update_reason. Prints SENT <what> lines, then DONE.
import json

from ironclad import cbor, events, identity, nonce, telemetry
from ironclad.mqtt import MQTTClient
from telemetry_peer import _read


class _Credentials:
    """The keystore's three entries, from the test's files."""

    FILES = {"ca": "ca.der", "cert": "cert.der", "device_key": "key.der"}

    def __init__(self, d):
        self.d = d

    def get(self, name):
        return _read(self.d + self.FILES[name])


def main(cfg_path):
    cfg = json.loads(_read(cfg_path))
    d, dev = cfg["dir"] + "/", cfg["device_id"]
    base = "%s/%s/" % (cfg["prefix"], dev)
    # The security-event log in the test's directory (not the board's flash).
    events.PATH, events.SENT_PATH = cfg["events"] + "/events.bin", cfg["events"] + "/events.sent"
    for kind, reason, outcome, detail in cfg["events_spec"]:
        events.record(kind, reason, outcome, detail)

    z = telemetry.shared_secret(_read(d + "key.der"), _read(d + "fleet.pub"))
    ctr = nonce.Counter()
    fields = tuple(cfg["fields"])
    sealer = telemetry.Sealer(z, dev, ctr, fields=fields)

    ctx = identity.tls_context(_Credentials(d))  # the agent's own mutual-TLS set-up
    c = MQTTClient(dev, cfg["host"], cfg["port"], ctx, server_hostname="localhost", keepalive=30, timeout_s=5)
    c.backoff.base_ms = 200
    c.reconnect(attempts=5)
    c.publish(base + telemetry.HELLO, telemetry.hello(_read(d + "cert.der"), ctr.epoch), retain=True, qos=1)
    c.publish(base + "state", b"online", retain=True, qos=1)

    def publish(m):
        c.publish(base + "events", m, qos=1)

    print("SENT events", telemetry.send_events(sealer, publish, base + "events"))
    for i in range(3):
        reading = {f: 10 * i + j for j, f in enumerate(fields)}
        c.publish(base + "telemetry", sealer.seal_reading(base + "telemetry", reading), qos=1)
    # A string value: what a tampered agent could send (the Sealer would not).
    body = cbor.encode({"id": dev, "seq": 99, fields[0]: cfg["text_value"]})
    c.publish(base + "telemetry", sealer.seal(base + "telemetry", body), qos=1)
    print("SENT readings 4")
    # An update report is plain JSON (docs/updates.md): its id and reason
    # are the device's words too; a rollback raises an alarm that quotes it.
    c.publish(base + "state/update", json.dumps({"state": "rolled_back", "id": cfg["update_id"],
                                                 "reason": cfg["update_reason"], "ver": 1 << 24}).encode(), qos=1)
    print("SENT report")
    c.disconnect()
    print("DONE")
