"""A staged rollout by the service to real simulated devices (the agent on
the unix port, each on its own flash, provisioned as `ictl provision` does:
ictl.fleet): ingest learns the devices from their hellos, the operator's
update (made for their certificates' keys, as `ictl update create` makes it)
is uploaded, and the engine rolls it out canary first; every device ends
confirmed on v2 and the service knows it."""
import os
import shutil
import tempfile
import time

import pytest

from ictl import broker as fleet_broker
from ictl.sim import fleet
from ictl import fleetkeys
from ictl import update as upd
from ictl.service import rollout, runner, store
from ictl.service import db as service_db
from ictl.service.rollout_rig import tar_dir

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto") and not any(
    os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES), reason="mosquitto not installed")


def _archive(pubs, new, base, keys):
    """What `ictl update create` writes for these devices, tarred for upload."""
    delta, full, metas = upd.create_for(pubs, new, base, keys.signing, keys.key_id)
    with tempfile.TemporaryDirectory() as out:
        for name, u in (("delta", delta), ("full", full)):
            if u:
                u.save(os.path.join(out, name), metas[name])
        return tar_dir(out)


def _run(db, rid, timeout=300):
    rollout.start(db, rid, "alice")
    end = time.monotonic() + timeout
    while rollout.status(db, rid)["state"] == "running":
        assert time.monotonic() < end, rollout.status(db, rid)
        time.sleep(0.5)
    return rollout.status(db, rid)


def test_service_rollout_to_real_devices(tmp_path):
    root = str(tmp_path)
    ops = fleet_broker.DEFAULT_OPERATORS + runner.operators(1)
    with fleet_broker.Broker(os.path.join(root, "broker"), operators=ops, die_with_parent=False) as br:
        keys, names, devdirs, v1, v2 = fleet.prepare(root, 3, br, lambda s: None)
        url = os.path.join(root, "svc.db")
        svc = runner.Service(url, br.state_dir, web=False, fleet_key_path=fleetkeys.path_in(keys.dir)).start()
        sup = fleet.Supervisor([fleet.Device(nm, d) for nm, d in zip(names, devdirs)])
        sup.start()
        db = service_db.connect(url)
        try:
            end = time.monotonic() + 120
            while db.one("SELECT count(*) AS n FROM devices WHERE pub IS NOT NULL")["n"] < 3:
                assert time.monotonic() < end, store.overview(db)
                time.sleep(0.5)
            pubs = [(r["device_id"], bytes.fromhex(r["pub"])) for r in db.query("SELECT device_id, pub FROM devices")]
            r = rollout.create(db, _archive(pubs, v2, v1, keys), {"filter": "sim-"},
                               {"canary": 1, "rate": "constant", "group_size": 2, "group_timeout_s": 240}, "alice")
            assert r["groups"] == [1, 2]
            st = _run(db, r["id"])
            assert st["state"] == "done" and st["done_pct"] == 100.0, st
            assert {d["kind"] for d in st["devices"]} == {"delta"}
            g = st["groups"]
            assert g[0]["finished_at"] <= g[1]["started_at"]        # the canary first
            end = time.monotonic() + 30
            while {d["app_version"] for d in store.overview(db)["devices"]} != {"2.0.0"}:
                assert time.monotonic() < end, store.overview(db)
                time.sleep(0.5)
            assert db.query("SELECT text FROM alarms") == []
            assert rollout.timeline_png(db, r["id"]).startswith(b"\x89PNG")

            # The same version again: the canary refuses it (not_newer) and the
            # rollout stops before the other two are offered anything.
            r = rollout.create(db, _archive(pubs, v2, None, keys), {"devices": names},
                               {"canary": 1, "group_timeout_s": 240}, "alice")
            t0 = time.time()
            st = _run(db, r["id"])
            assert st["state"] == "stopped" and "failures 1 of 1" in st["stop_reason"], st
            assert [d["reason"] for d in st["devices"] if d["group_idx"] == 0] == ["not_newer"]
            time.sleep(2)
            for dev in names[1:]:
                assert [x for x in store.update_reports(db, dev) if x["ts"] > t0] == [], dev
        finally:
            db.close()
            sup.stop()
            svc.stop()
