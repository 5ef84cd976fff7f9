"""`ictl serve` end to end against the real mosquitto: a kill -9 in the
middle of a stream loses nothing and stores nothing twice; two workers
sharing the subscription into a real PostgreSQL; alarms to a webhook on
loopback; commands and their replies; revocation; retention."""
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from ictl import broker as fleet_broker
from ictl import fleetkeys, fleetkeys as fk, pki
from ictl.console import open_encrypt0
from ictl.service import db as service_db
from ictl.service import fleetops, retention, runner, simdev, store
from pg import pg_server, pg_url  # noqa: F401  (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(not shutil.which("mosquitto") and not any(
    os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES), reason="mosquitto not installed")


@pytest.fixture
def broker(tmp_path):
    with fleet_broker.Broker(str(tmp_path / "broker"), die_with_parent=False,
                             operators=fleet_broker.DEFAULT_OPERATORS + runner.operators(2)) as br:
        yield br


def _device(br, name):
    ca = pki.load_ca(br.pki_dir)
    d = simdev.SimDevice(ca, fleetkeys.public_point(fleetkeys.ensure(br.pki_dir)), name)
    d.connect(br.host, br.port, br.ca_path)
    d.publish(d.hello(), retain=True)
    return d


def _until(cond, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _serve(br, db_path, *extra):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    p = subprocess.Popen([sys.executable, "-m", "ictl", "serve", "--broker", br.state_dir, "--db", db_path,
                          "--port", "0"] + list(extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    lines = []
    while True:
        line = p.stdout.readline()
        if not line:
            raise AssertionError("ictl serve ended:\n" + "".join(lines))
        lines.append(line)
        if line.startswith("serve: console at") or "setup token" in line or "no setup token" in line:
            if "--init" not in extra or "token" in line:
                return p, lines


def test_kill_mid_stream_loses_nothing_stores_nothing_twice(tmp_path, broker):
    db_path = str(tmp_path / "svc.db")
    p, lines = _serve(broker, db_path, "--init")
    try:
        assert any(l.startswith("serve: console at https://127.0.0.1:") for l in lines), lines
        token = [l for l in lines if "setup token" in l][0].rsplit(" ", 1)[1].strip()
        assert len(token) >= 20
        dev = _device(broker, "dev-0100")
        db = service_db.connect(db_path)
        N = 600
        for _ in range(N):
            dev.publish(dev.reading(), wait=False)
        end = time.monotonic() + 30
        while db.one("SELECT count(*) AS n FROM readings")["n"] < 20 and time.monotonic() < end:
            time.sleep(0.005)
        p.kill()                                   # mid-stream: some delivered, not yet acknowledged
        p.wait(10)
        got = db.one("SELECT count(*) AS n FROM readings")["n"]
        assert got < N, "the kill came too late to test anything"
        for _ in range(50):                        # more while the service is down
            dev.publish(dev.reading(), wait=False)
        p, lines = _serve(broker, db_path, "--init")
        assert any("no setup token" in l for l in lines) or any("setup token" in l for l in lines)
        assert _until(lambda: db.one("SELECT count(*) AS n FROM readings")["n"] >= N + 50, 45)
        time.sleep(1)
        seqs = [r["seq"] for r in db.query("SELECT seq FROM readings ORDER BY seq")]
        assert seqs == list(range(N + 50))
        assert db.query("SELECT text FROM alarms") == []
        db.close()
        dev.close()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)


class _Hook(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_two_workers_postgresql_webhook_commands_revoke(tmp_path, broker, pg_url):  # noqa: F811
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    secret = b"k" * 32
    svc = runner.Service(pg_url, broker.state_dir, workers=2, web=False, webhook="http://127.0.0.1:%d/hook"
                         % hook.server_address[1], webhook_secret=secret).start()
    devs = []
    try:
        db = service_db.connect(pg_url)
        devs = [_device(broker, "dev-%04d" % i) for i in range(4)]
        assert _until(lambda: db.one("SELECT count(*) AS n FROM devices WHERE online = 1")["n"] == 4)
        threads = [threading.Thread(target=lambda d=d: [d.publish(d.reading()) for _ in range(25)]) for d in devs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _until(lambda: db.one("SELECT count(*) AS n FROM readings")["n"] >= 100), \
            (db.one("SELECT count(*) AS n FROM readings"), db.query("SELECT text FROM alarms"),
             [(w.counts, w.errors) for w in svc.workers])
        time.sleep(0.5)
        assert db.one("SELECT count(*) AS n FROM readings")["n"] == 100
        assert all(w.counts["readings"] > 0 for w in svc.workers), [w.counts for w in svc.workers]
        assert db.query("SELECT text FROM alarms") == []

        # a burst of event batches from one device: checked in order by the
        # events owner alone, so no chain alarm however the workers share
        d3 = devs[3]
        for i in range(12):
            d3.publish(d3.events(("boot", "ok", "info", str(i)), ("cmd", "read", "ok", "")), wait=False)
        assert _until(lambda: db.one("SELECT count(*) AS n FROM events WHERE device_id = 'dev-0003'")["n"] == 24)
        assert [w.counts["events"] for w in svc.workers] == [24, 0]
        assert db.query("SELECT text FROM alarms") == []

        # an event gap: an alarm, stored once, posted to the webhook with its HMAC
        d0 = devs[0]
        d0.publish(d0.events(("boot", "ok", "info", "")))
        d0.ev_seq += 3
        d0.publish(d0.events(("cmd", "forged", "rejected", "<script>x</script>")))
        assert _until(lambda: len(_Hook.got) >= 2)
        kinds = sorted(json.loads(b)["kind"] for _, b in _Hook.got)
        assert kinds == ["chain_gap", "forgery"], _Hook.got
        for headers, body in _Hook.got:
            assert headers["X-Ironclad-Signature"] == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert store.device(db, "dev-0000")["chain_status"] == "broken"

        # a command: sealed under the device's key, its reply stored beside it
        seen = []
        d1 = devs[1]
        d1._client.on_message = lambda c, u, m: seen.append((m.topic, m.payload))
        d1._client.subscribe(d1.topic("cmd"), qos=1)
        time.sleep(0.3)
        assert fleetops.send_command(db, "dev-0001", "interval", {"s": "0x10"}, "alice")["ok"]
        bad = fleetops.send_command(db, "dev-0001", "wipe", {"confirm": 1}, "alice")
        assert not bad["ok"] and "confirm" in bad["reason"]
        assert _until(lambda: seen)
        key, iv = fk.derive(d1.z, d1.epoch, fk.DOWN, d1.id)
        ctr, pt = open_encrypt0(key, iv, seen[0][1], seen[0][0].encode())
        import cbor2
        assert cbor2.loads(pt)["op"] == "interval" and cbor2.loads(pt)["s"] == 16
        d1.publish(d1.reply(ctr))
        assert _until(lambda: store.commands(db, "dev-0001")[0]["reply"] is not None)
        assert store.commands(db, "dev-0001")[0]["reply"]["ok"] is True

        # revocation (the CA inventory needs an issued row: issue through ictl.ca)
        from ictl import ca as fleet_ca
        ca = pki.load_ca(broker.pki_dir)
        fleet_ca.Inventory.of(ca).record_issued(d1.cert, "dev-0001", "uid1", "test", "1.0.0")
        r = fleetops.revoke(db, "dev-0001", "alice")
        assert r["ok"] and r["serials"], r
        assert store.certificates(db, "dev-0001")[0]["status"] == "revoked"
        assert not fleetops.revoke(db, "dev-0001", "alice")["ok"]
        db.close()
    finally:
        for d in devs:
            d.close()
        svc.stop()
        hook.shutdown()


def test_retention_per_kind(tmp_path):
    db = service_db.connect(str(tmp_path / "r.db"))
    db.migrate()
    now = time.time()
    for i, age in enumerate((40 * 86400, 10 * 86400, 60)):
        db.execute("INSERT INTO readings (device_id, key_id, counter, received_at, data) VALUES ('d', 'k', ?, ?, '{}')",
                   (i, now - age))
        db.execute("INSERT INTO events (device_id, key_id, seq, kind, reason, outcome, detail, hash, received_at) "
                   "VALUES ('d', 'k', ?, 'boot', 'ok', 'info', '', 'h', ?)", (i, now - age))
    policy = retention.parse_policy({"readings": "30d", "events": "5d"})
    assert retention.enforce(db, policy, now)["readings"] == 1
    assert db.one("SELECT count(*) AS n FROM readings")["n"] == 2
    assert db.one("SELECT count(*) AS n FROM events")["n"] == 1
    assert retention.parse_policy({"readings": "forever"})["readings"] is None
    for bad in ("30", "0d", "1y", "-1d"):
        with pytest.raises(Exception, match="duration"):
            retention.parse_policy({"readings": bad})
    db.close()


def test_broker_admits_the_service_only_when_asked(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    bdir = str(tmp_path / "b")
    with fleet_broker.Broker(bdir, die_with_parent=False):
        r = subprocess.run([sys.executable, "-m", "ictl", "serve", "--broker", bdir, "--db", str(tmp_path / "s.db"),
                            "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--service-workers 1" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    bdir = str(tmp_path / "b2")
    b = subprocess.Popen([sys.executable, "-m", "ictl", "broker", "start", "--dir", bdir, "--service-workers", "1"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _until(lambda: fleet_broker.read_state(bdir).get("port"), 30)
        time.sleep(0.5)

        class _B:
            state_dir = bdir
        p, lines = _serve(_B, str(tmp_path / "s.db"))
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        b.send_signal(signal.SIGINT)
        b.wait(20)


def test_pki_import_is_idempotent_and_skips_garbage(tmp_path):
    from ictl import ca as fleet_ca
    ca = pki.init_ca(str(tmp_path / "pki"), dev=True)
    cert = pki.issue_client_cert(ca, pki.new_key().public_key(), "dev-0007")
    fleet_ca.Inventory.of(ca).record_issued(cert, "dev-0007", "uid7", "op", "1.0.0")
    log = tmp_path / "pki" / "provision.jsonl"
    log.write_text(json.dumps({"device_id": "dev-0007", "time": "2026-01-01T00:00:00+00:00", "outcome": "ok",
                               "operator": "<b>op</b>"}) + "\nnot json\n[1]\n")
    db = service_db.connect(str(tmp_path / "s.db"))
    db.migrate()
    assert fleetops.sync_pki(db, ca.dir) == (1, 1)
    assert fleetops.sync_pki(db, ca.dir) == (1, 0)
    rec = store.provisioning_records(db)
    assert len(rec) == 1 and rec[0]["operator"] == "<b>op</b>" and rec[0]["record"]["outcome"] == "ok"
    assert [c["status"] for c in store.certificates(db)] == ["issued"]
    fleet_ca.revoke(ca, "dev-0007", operator="op")
    fleetops.sync_pki(db, ca.dir)
    assert [(c["status"], c["reason"]) for c in store.certificates(db)] == [("revoked", "decommissioned")]
    db.close()
