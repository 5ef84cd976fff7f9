"""Ingest: every message opened and checked with the console's checks,
stored once; nothing lost over a worker restart (real mosquitto, QoS 1,
persistent session, ack after commit); two workers sharing the
subscription into a real PostgreSQL."""
import os
import shutil
import time

import pytest

from ictl import broker as fleet_broker
from ictl import fleetkeys, pki
from ictl.service import db as service_db
from ictl.service import ingest, simdev
from pg import pg_server, pg_url  # noqa: F401  (fixtures)

needs_mosquitto = pytest.mark.skipif(not shutil.which("mosquitto") and not any(
    os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES), reason="mosquitto not installed")


@pytest.fixture
def fleet(tmp_path):
    pki_dir = str(tmp_path / "pki")
    ca = pki.init_ca(pki_dir, dev=True)
    key = fleetkeys.ensure(pki_dir)
    return ca, key, pki_dir


def _worker(url, fleet, **kw):
    ca, key, pki_dir = fleet
    return ingest.Ingest(url, key, os.path.join(pki_dir, pki.CA_CERT), **kw)


def _db(tmp_path):
    d = service_db.connect(str(tmp_path / "svc.db"))
    d.migrate()
    return d


def test_checks_and_stores_once(tmp_path, fleet):
    ca, key, _ = fleet
    d = _db(tmp_path)
    w = _worker(str(tmp_path / "svc.db"), fleet)
    dev = simdev.SimDevice(ca, fleetkeys.public_point(key), "dev-0001")
    r1, r2 = dev.reading(temp_c=20.5), dev.reading(**{"<script>alert(1)</script>": "<svg onload=x>"})
    ev = dev.events(("boot", "ok", "info", ""), ("cmd", "forged", "rejected", ""))
    w.process_batch([dev.hello(), r1, r2, ev])
    # a QoS 1 redelivery of all of it, then a replay of r1 under a new counter's topic
    w.process_batch([dev.hello(), r1, r2, ev])
    rows = d.query("SELECT counter, seq, data FROM readings ORDER BY counter")
    assert [(r["counter"], r["seq"]) for r in rows] == [(1, 0), (2, 1)]
    assert "<script>alert(1)</script>" in rows[1]["data"]
    assert [(e["seq"], e["reason"]) for e in d.query("SELECT seq, reason FROM events ORDER BY seq")] == \
        [(1, "ok"), (2, "forged")]
    dv = d.one("SELECT * FROM devices WHERE device_id = 'dev-0001'")
    assert dv["online"] == 1 and dv["cert_serial"] and dv["key_epoch"] == dev.epoch.hex()
    al = d.query("SELECT kind, text FROM alarms")
    assert [a["kind"] for a in al] == ["forgery"], al          # the forged command the device refused

    # forged (another key), events with a gap, a replay of an old counter, a key change
    _, forged = simdev.SimDevice(ca, fleetkeys.public_point(key), "dev-0001").reading()
    dev.ev_seq += 2                                                  # two records never sent
    gap = dev.events(("boot", "ok", "info", ""))
    old = dev.seal("telemetry", {"seq": 99}, counter=1)
    w.process_batch([("ironclad/dev-0001/telemetry", forged), gap, old])
    kinds = sorted(a["kind"] for a in d.query("SELECT kind FROM alarms"))
    assert kinds == ["chain_gap", "forgery", "forgery"], d.query("SELECT * FROM alarms")
    assert d.one("SELECT count(*) AS n FROM readings")["n"] == 2    # neither forged nor old stored
    new = simdev.SimDevice(ca, fleetkeys.public_point(key), "dev-0001")
    w.process_batch([new.hello(), new.reading()])
    assert d.one("SELECT count(*) AS n FROM alarms WHERE kind = 'key_change'")["n"] == 1
    assert d.one("SELECT count(*) AS n FROM readings")["n"] == 3
    # update reports: stored once; a rollback raises an alarm
    rep = dev.update_report("rolled_back", "ab" * 8, ver=1 << 24)
    w.process_batch([rep, rep])
    assert d.one("SELECT count(*) AS n FROM update_reports")["n"] == 1
    assert d.one("SELECT count(*) AS n FROM alarms WHERE kind = 'rollback'")["n"] == 1
    w.process_batch([dev.update_report("confirmed", "cd" * 8, ver=(2 << 24) | (1 << 16) | 3)])
    assert d.one("SELECT app_version FROM devices WHERE device_id = 'dev-0001'")["app_version"] == "2.1.3"
    d.close()


def test_shared_workers_take_reordered_messages_once(tmp_path, fleet):
    """Two workers sharing a subscription may commit a device's messages in
    the other order: the shared check takes each unseen one once; the
    single-worker check (the console's own) refuses the late one."""
    ca, key, _ = fleet
    d = _db(tmp_path)
    dev = simdev.SimDevice(ca, fleetkeys.public_point(key), "dev-0002")
    msgs = [dev.reading() for _ in range(4)]
    shared = _worker(str(tmp_path / "svc.db"), fleet, shared=True)
    # the first message last (two workers: the other one committed first)
    shared.process_batch([dev.hello(), msgs[2], msgs[1], msgs[1], msgs[3], msgs[0]])
    assert [r["seq"] for r in d.query("SELECT seq FROM readings ORDER BY seq")] == [0, 1, 2, 3]
    assert d.query("SELECT * FROM alarms") == []
    # older than the window: a replay even for shared workers
    far = dev.seal("telemetry", {"seq": 9}, counter=1000)
    shared.process_batch([far, msgs[0]])
    assert d.one("SELECT kind FROM alarms")["kind"] == "replay"
    assert d.one("SELECT count(*) AS n FROM readings")["n"] == 5
    single = _worker(str(tmp_path / "one.db"), fleet)
    single.db.migrate()
    single.process_batch([dev.hello(), msgs[0], msgs[2], msgs[1]])
    assert single.db.one("SELECT count(*) AS n FROM readings")["n"] == 2
    assert single.db.one("SELECT kind FROM alarms")["kind"] == "replay"
    d.close()


def test_webhook_retries_with_backoff_then_gives_up(tmp_path):
    from ictl import ToolError
    from ictl.service import alarms
    d = _db(tmp_path)
    aid = alarms.raise_alarm(d, "dev-0001", "forgery", "x", "s1", now=100.0)
    with pytest.raises(ToolError):
        alarms.Webhook(str(tmp_path / "svc.db"), "http://user:pw@127.0.0.1/")
    hook = alarms.Webhook(str(tmp_path / "svc.db"), "http://127.0.0.1:%d/" % fleet_broker.free_port(), timeout=2)
    t = 1000.0
    for tries in range(1, alarms.WEBHOOK_TRIES + 1):
        assert hook.deliver_pending(d, now=t) == 0          # nobody listens: refused
        row = d.one("SELECT webhook_state, webhook_tries FROM alarms WHERE id = ?", (aid,))
        assert row["webhook_tries"] == tries
        hook.deliver_pending(d, now=t + 1)                  # not due yet: no try
        assert d.one("SELECT webhook_tries FROM alarms WHERE id = ?", (aid,))["webhook_tries"] == tries
        t += alarms.WEBHOOK_BACKOFF_S * tries
    assert row["webhook_state"] == "failed"
    d.close()


def test_out_of_range_numbers_are_not_stored_and_do_not_stop_the_batch(tmp_path, fleet):
    ca, key, _ = fleet
    d = _db(tmp_path)
    w = _worker(str(tmp_path / "svc.db"), fleet)
    dev = simdev.SimDevice(ca, fleetkeys.public_point(key), "dev-0003")
    ok = dev.reading(seq=2 ** 70, ts=True)              # fields out of range: stored without them
    huge = dev.seal("telemetry", {"seq": 1}, counter=2 ** 64)
    w.process_batch([dev.hello(), ok, huge, dev.update_report("downloading", "ab" * 8, pct=2 ** 40)])
    assert d.one("SELECT state, pct FROM update_reports") == {"state": "downloading", "pct": None}
    rows = d.query("SELECT counter, seq, device_ts FROM readings")
    assert rows == [{"counter": 1, "seq": None, "device_ts": None}]
    assert "beyond 2^63" in d.one("SELECT text FROM alarms")["text"]
    d.close()
