"""Host fuzz (issue 14): the host tools trust nothing a device or the broker
says. Two campaigns, one seed:

- rollout: honest devices (ictl.sim.peers.UpdatePeer) and compromised ones
  on one mosquitto (mutual TLS, the broker's ACL); the compromised devices
  send random and hostile reports (ictl.sim.peers.hostile_report) to the
  Rollout that `ictl update publish` runs, while it serves the honest ones.
- console: hostile hellos (a superseded, a revoked, another device's
  certificate, junk), replays and mutations of every honest message, fed to
  Console.handle() (what paho's thread calls) between honest messages of a
  device that was re-provisioned during the run.

A failure: the rollout's or a callback's thread dead or raising, an honest
device that did not finish or got a wrong chunk, an honest message not
accepted, a replayed or mutated message accepted, a hello that changed a
device's key without an alarm or moved its event chain."""
import hashlib
import io
import os
import tempfile
import threading
import time

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ictl import broker as fleet_broker
from ictl import ca as fleet_ca
from ictl import fleetkeys, pki
from ictl import update as host_update
from ictl.console import Console
from ictl.sim import peers

ACCEPTED = ("telemetry", "events", "reply")


def add_args(p):
    p.add_argument("--host-fuzz-reports", type=int, default=5000, metavar="N",
                   help="hostile device reports sent to a rollout, and as many hostile messages to the console "
                        "(default 5000)")
    p.add_argument("--host-fuzz-seed", type=int, default=1, help="host fuzz seed (default 1)")


# ------------------------------------------------------------------ rollout

def rollout_fuzz(tmp, reports, seed, honest=3, hostile=2, chunks=10, timeout=180):
    rng = peers.rng_for(seed)
    notes = []
    br = fleet_broker.Broker(os.path.join(tmp, "broker"), operators=(pki.CONSOLE_ID, host_update.UPDATER_ID))
    br.start()
    clients = []
    try:
        ca = br.load_ca()
        patch = os.urandom(chunks * host_update.CHUNK - 100)
        upd = host_update.Update.seal(patch, "app", "esp32-sim", 2, 2, None,
                                      {"len": len(patch), "sha": hashlib.sha256(patch).digest()}, "none")
        sign = rsa.generate_private_key(65537, 3072)
        good = [peers.UpdatePeer(br, "honest-%d" % i, upd, ca).start() for i in range(honest)]
        clients += [p.c for p in good]
        bad = []
        for i in range(hostile):
            k = ec.generate_private_key(ec.SECP256R1())
            name = "hostile-%d" % i
            c = peers.connect(peers.client(name, br.ca_path, pki.issue_client_cert(ca, k.public_key(), name), k),
                              br.host, br.port)
            clients.append(c)
            bad.append((name, k, c))
        plans = {p.id: [(upd, upd.metadata(p.id, fleetkeys.public_point(p.key), sign, "fuzz"))] for p in good}
        plans.update({n: [(upd, upd.metadata(n, fleetkeys.public_point(k), sign, "fuzz"))] for n, k, _ in bad})
        kp, cp = host_update.updater_credentials(br.pki_dir)
        r = host_update.Rollout(br.host, br.port, br.ca_path, cp, kp, prefix=br.prefix, out=io.StringIO())
        r.connect()
        res = {}
        t = threading.Thread(target=lambda: res.update(r.run(plans, timeout=timeout, progress=False)), daemon=True)
        t.start()
        sent = 0
        kinds = {}
        uid = upd.id.hex()
        last = None
        while sent < reports:
            name, _, c = bad[sent % len(bad)]
            payload, kind = peers.hostile_report(rng, upd.n, uid)
            kinds[kind] = kinds.get(kind, 0) + 1
            # Now and then on an honest device's topic: the broker's ACL drops it.
            target = good[rng.randrange(len(good))].id if rng.random() < 0.02 else name
            last = c.publish("%s/%s/%s" % (br.prefix, target, host_update.REPORT_KIND), payload, qos=1)
            sent += 1
            if sent % 50 == 0:
                last.wait_for_publish(10)
                for p in good:
                    p.tick()
        if last is not None:
            last.wait_for_publish(10)
        for name, _, c in bad:  # the compromised devices give up: the rollout can end
            c.publish("%s/%s/%s" % (br.prefix, name, host_update.REPORT_KIND),
                      b'{"state": "rejected", "reason": "fuzz_done", "id": "%s"}' % uid.encode(), qos=1)
        end = time.monotonic() + timeout
        while t.is_alive() and time.monotonic() < end:
            for p in good:
                p.tick()
            t.join(0.5)
        failures = 0
        if not r.alive():
            failures += 1
            notes.append("the rollout's MQTT client thread is dead")
        if r.guard.errors:
            failures += r.guard.errors
            notes.append("callbacks raised: %s" % r.guard.last)
        for p in good:
            st = res.get(p.id, r.status.get(p.id, {})).get("state")
            if st != "applied" or p.state != "applied":
                failures += 1
                notes.append("%s did not finish: rollout says %s, device %s at chunk %d of %d"
                             % (p.id, st, p.state, p.next, upd.n))
            if p.bad_chunks:
                failures += 1
                notes.append("%s got %d wrong chunks" % (p.id, p.bad_chunks))
        refused = sum(r.invalid.get(n, [0])[0] for n, _, _ in bad)
        r.close()
        return {"sent": sent, "refused": refused, "failures": failures, "notes": notes, "kinds": kinds,
                "bytes": r.bytes_sent, "n": upd.n, "honest": honest, "hostile": hostile}
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        br.stop()


# ------------------------------------------------------------------ console

def _mutate(rng, payload):
    b = bytearray(payload)
    how = rng.randrange(4)
    if how == 0 and b:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 1:
        b = b[:rng.randrange(len(b) + 1)]
    elif how == 2:
        b = bytearray(os.urandom(rng.randrange(1, 120)))
    else:
        b += os.urandom(rng.randrange(1, 16))
    return bytes(b)


def console_fuzz(tmp, messages, seed):
    rng = peers.rng_for(seed + 1)
    notes = []
    failures = 0
    ca_dir = os.path.join(tmp, "pki")
    ca = pki.init_ca(ca_dir, dev=True)
    inv = fleet_ca.Inventory.of(ca)
    fleet = ec.generate_private_key(ec.SECP256R1())
    con = Console("127.0.0.1", 1, os.path.join(ca_dir, pki.CA_CERT), None, None, fleet,
                  state_path=os.path.join(tmp, "console.json"))
    old = peers.DeviceDouble(ca, "c1", fleet.public_key())
    other = peers.DeviceDouble(ca, "c3", fleet.public_key())
    bad = peers.DeviceDouble(ca, "c2", fleet.public_key())
    for d in (old, other, bad):
        inv.record_issued(d.cert, d.id, d.id, "fuzz", None)
    seen = []  # every honest message: replays of them must never be accepted

    def feed(topic, payload):
        nonlocal failures
        try:
            return con.handle(topic, payload)
        except Exception as e:  # anything escaping handle() would be an alarm-less "console error" live
            failures += 1
            notes.append("console raised %r on %s" % (e, topic))
            return []

    def honest(msg, must=True):
        nonlocal failures
        seen.append(msg)
        out = feed(*msg)
        if must and not any(m.kind in ACCEPTED + ("state",) and m.body is not None for m in out):
            failures += 1
            notes.append("honest %s not accepted: %s" % (msg[0], out))
        return out

    for d in (old, bad, other):
        honest(d.hello())
        for _ in range(3):
            honest(d.reading())
            honest(d.events(2))
    # c2 is compromised and revoked: from now on nothing of it counts.
    fleet_ca.revoke(ca, device_id="c2", reason="key_compromise", operator="fuzz")
    # c1 is re-provisioned: a new key pair and certificate, the inventory
    # supersedes the old one; its event log goes on, its nonce counter starts
    # again under a new epoch.
    new = peers.DeviceDouble(ca, "c1", fleet.public_key())
    new.seq, new.head = old.seq, old.head
    inv.record_issued(new.cert, new.id, new.id, "fuzz", None)
    seen.append(new.hello())
    out = feed(*seen[-1])
    if not any(m.alarm and "key changed" in m.text for m in out):
        failures += 1
        notes.append("key change without an alarm: %s" % out)
    honest(new.reading())
    honest(new.events(1))
    hellos = [old.hello(), bad.hello(), ("ironclad/c1/state/keys", other.hello()[1]),
              ("ironclad/c1/state/keys", cbor2.dumps({"cert": pki.cert_der(new.cert), "epoch": b"\x00" * 7}))]
    sent = 0
    while sent < messages:
        d = con.devices["c1"]
        before = (d["pub"], d["events"], dict(d["high"]))
        pick = rng.random()
        if pick < 0.15:
            topic, payload = rng.choice(hellos)
            kind = "hello"
        elif pick < 0.2:  # the device's own hello, republished with an epoch of the broker's making
            topic, payload = "ironclad/c1/state/keys", cbor2.dumps({"cert": pki.cert_der(new.cert),
                                                                   "epoch": os.urandom(8)})
            kind = "hello"
        elif pick < 0.25:
            topic, payload = "ironclad/c1/state/keys", cbor2.dumps(
                rng.choice([{}, {"cert": os.urandom(40), "epoch": os.urandom(8)}, {"cert": 1, "epoch": []},
                            [1, 2], {"cert": pki.cert_der(old.cert)}]))
            kind = "hello"
        elif pick < 0.3:
            # c3 is compromised (not yet revoked): it holds its keys and seals
            # whatever it likes; nothing of it may touch c1.
            topic, payload = other.seal_raw(rng.choice(("telemetry", "events", "reply")),
                                            peers.hostile_plaintext(rng, rng.choice(("c3", "c1"))))
            kind = "sealed by a compromised device"
        elif pick < 0.6:
            topic, payload = rng.choice(seen)
            kind = "replay"
        else:
            topic, payload = rng.choice(seen)
            payload = _mutate(rng, payload)
            kind = "mutated"
        sent += 1
        out = feed(topic, payload)
        got = [m for m in out if m.kind in ACCEPTED and m.body is not None]
        if kind.startswith("sealed"):
            got = [m for m in got if m.device != "c3"]  # its own readings may be odd, but are its own
        if got:
            failures += 1
            notes.append("%s accepted on %s: %s" % (kind, topic, got[0]))
        d = con.devices["c1"]
        if (d["pub"], d["events"]) != before[:2] and not any(m.alarm for m in out):
            failures += 1
            notes.append("%s on %s moved c1's key or event chain without an alarm" % (kind, topic))
        if any(d["high"].get(k, -1) < v for k, v in before[2].items()):
            failures += 1
            notes.append("%s on %s lowered a replay mark" % (kind, topic))
        if sent % 40 == 0:  # the honest device goes on, and is heard
            honest(new.reading())
            honest(new.events(1))
    honest(new.reading())
    return {"sent": sent, "failures": failures, "notes": notes}


def run(fig, args):
    with tempfile.TemporaryDirectory(prefix="soak-hostfuzz-") as tmp:
        a = rollout_fuzz(os.path.join(tmp, "rollout"), args.host_fuzz_reports, args.host_fuzz_seed)
        os.makedirs(os.path.join(tmp, "console"))
        b = console_fuzz(os.path.join(tmp, "console"), args.host_fuzz_reports, args.host_fuzz_seed)
    for note in (a["notes"] + b["notes"])[:20]:
        print("  host fuzz:", note)
    fig.add("host_fuzz_reports", a["sent"] + b["sent"], "messages",
            "hostile inputs (seed %d): %d reports from %d compromised devices through mosquitto to the rollout "
            "(%d refused as invalid or rationed, the rest well-formed or dropped by the broker ACL; kinds %s) while it served "
            "%d honest devices an update of %d chunks; %d hellos, replays and mutations fed to the console"
            % (args.host_fuzz_seed, a["sent"], a["hostile"], a["refused"],
               ", ".join("%s %d" % kv for kv in sorted(a["kinds"].items())), a["honest"], a["n"], b["sent"]))
    fig.add("host_fuzz_failures", a["failures"] + b["failures"], "count",
            "a dead or raising client thread, an honest device not finished or given a wrong chunk, an honest "
            "message not accepted, a replay or mutation accepted, a key change or chain move without an alarm "
            "(must be 0)")
    return a["failures"] + b["failures"]
