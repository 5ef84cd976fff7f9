"""Staged rollouts: upload checks, groups, two-person rule, and the engine
against the real mosquitto with device stand-ins answering the update
(tools/ictl/service/rollout_rig.py): a good rollout completes group by
group; a failing canary stops it before the next group; pause holds the
next group until resume."""
import io
import os
import shutil
import tarfile
import time

import pytest

from ictl import broker as fleet_broker
from ictl.service import rollout
from ictl.service.rollout_rig import RolloutRig, tar_dir

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto") and not any(
    os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES), reason="mosquitto not installed")


def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _wait(cond, timeout=30, tick=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tick:
            tick()
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_groups_plan():
    p = rollout._params({"canary": 1, "rate": "exponential", "factor": 2})
    assert rollout.groups_for(10, p) == [1, 2, 4, 3]
    p = rollout._params({"canary": 2, "rate": "constant", "group_size": 3})
    assert rollout.groups_for(10, p) == [2, 3, 3, 2]
    for bad in ({"canary": 0}, {"rate": "fast"}, {"failure_threshold": 1.5}, {"nope": 1}, {"factor": "x"}):
        with pytest.raises(rollout.RolloutError):
            rollout._params(bad)


def test_upload_checks_two_person_rule_and_rollouts(tmp_path):
    with RolloutRig(tmp_path, n=7, fail=("sim-0000", "sim-0001")) as rig:
        db = rig.db
        good = rig.update_archive()
        bad_uploads = {
            b"not a tar at all": "not a tar",
            _tar({"../evil": b"x"}): "not a plain file",
            _tar({"full/update.json": b"{}"}): "not an update made",
            _tar({"other/x": b"x"}): "unexpected",
        }
        with tarfile.open(fileobj=io.BytesIO(good)) as tf:   # a chunk count that lies
            d = tmp_path / "lie"
            tf.extractall(d, filter="data")
        with open(d / "full" / "chunks.bin", "ab") as f:
            f.write(b"\x00\x00\x00\x01x")
        bad_uploads[tar_dir(str(d))] = "does not describe the [0-9]+ chunks in chunks.bin"  # (ictl.update checks the directory first)
        for data, why in bad_uploads.items():
            with pytest.raises(rollout.RolloutError, match=why):
                rollout.create(db, data, {"devices": ["sim-0002"]}, {}, "alice")
        with pytest.raises(rollout.RolloutError, match="no metadata for nosuch"):
            rollout.create(db, good, {"devices": ["nosuch"]}, {}, "alice")
        assert db.one("SELECT count(*) AS n FROM rollouts")["n"] == 0     # refused: nothing stored


        # targets by filter and by percentage (a stable pick), refused ones
        for targets, why in (({"percentage": 0}, "percentage"), ({"filter": "nomatch"}, "no known device"),
                             ({"devices": []}, "non-empty"), ({"everyone": 1}, "unknown kind")):
            with pytest.raises(rollout.RolloutError, match=why):
                rollout.create(db, good, targets, {}, "alice")
        p1 = rollout.create(db, good, {"percentage": 50}, {}, "alice")
        p2 = rollout.create(db, good, {"percentage": 50}, {}, "alice")
        picked = [sorted(d["device_id"] for d in rollout.status(db, x["id"])["devices"]) for x in (p1, p2)]
        assert len(picked[0]) == 4 and picked[0] == picked[1]
        rollout.start(db, p1["id"], "alice")
        with pytest.raises(rollout.RolloutError, match="still in rollout %d" % p1["id"]):
            rollout.start(db, p2["id"], "alice")
        for x in (p1, p2):
            rollout.cancel(db, x["id"], "alice")

        # A failing canary (two devices reject) stops the rollout before group 1.
        r = rollout.create(db, good, {"filter": "sim-"}, {"canary": 2, "factor": 2, "approvals": 1,
                                                          "group_timeout_s": 60}, "alice")
        assert r["groups"] == [2, 4, 1] and r["state"] == "awaiting_approval"
        with pytest.raises(rollout.RolloutError, match="two-person"):
            rollout.approve(db, r["id"], "alice")
        with pytest.raises(rollout.RolloutError, match="awaiting_approval"):
            rollout.start(db, r["id"], "alice")
        assert rollout.approve(db, r["id"], "bob")["state"] == "ready"
        rollout.start(db, r["id"], "alice")
        eng = rig.engine(tick_s=0.1)
        try:
            assert _wait(lambda: rollout.status(db, r["id"])["state"] == "stopped", tick=lambda: eng.tick(db))
            st = rollout.status(db, r["id"])
            assert "failures 2 of 2" in st["stop_reason"], st
            later = [d for d in st["devices"] if d["group_idx"] > 0]
            assert all(d["state"] == "not_started" for d in later), later
            time.sleep(0.5)
            assert all(rig.responders[d["device_id"]].metadata == 0 for d in later)

            # A good rollout to the five others, paused after the canary, resumed, done.
            ids = ["sim-%04d" % i for i in range(2, 7)]
            r2 = rollout.create(db, good, {"devices": ids}, {"canary": 1, "rate": "constant", "group_size": 2,
                                                              "group_timeout_s": 60}, "alice")
            assert r2["groups"] == [1, 2, 2]
            rig.responders["sim-0003"].hostile = True
            rollout.start(db, r2["id"], "alice")
            eng.tick(db)
            rollout.pause(db, r2["id"], "alice")
            assert _wait(lambda: rollout.status(db, r2["id"])["groups"][0]["state"] == "done", tick=lambda: eng.tick(db))
            for _ in range(5):
                eng.tick(db)
            assert rollout.status(db, r2["id"])["current_group"] == 0     # paused: group 1 waits
            rollout.resume(db, r2["id"], "alice")
            assert _wait(lambda: rollout.status(db, r2["id"])["state"] == "done", tick=lambda: eng.tick(db))
            st = rollout.status(db, r2["id"])
            assert st["done_pct"] == 100.0 and {d["state"] for d in st["devices"]} == {"confirmed"}
            tl = db.query("SELECT pct, reason FROM rollout_timeline WHERE device_id = 'sim-0003' AND state = "
                          "'downloading'")
            # the hostile report was refused whole (ictl.update.check_report): nothing of it stored
            assert tl and not any(x["reason"] == "<svg onload=alert(1)>" or (x["pct"] or 0) > 100 for x in tl), tl
            with pytest.raises(rollout.RolloutError, match="done: cannot cancel"):
                rollout.cancel(db, r2["id"], "alice")
            svg = rollout.timeline_svg(db, r2["id"])
            assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
            assert rollout.timeline_png(db, r["id"]).startswith(b"\x89PNG")
        finally:
            eng.stop()


def test_soak_slice_failing_canary_stops_the_rollout(tmp_path):
    from ictl.measure import soak_rollout
    res = soak_rollout.trials(3, devices=6, seed=3, tmp=str(tmp_path))
    assert all(ok for ok, _, _ in res), [d for _, d, _ in res]
