"""Rollout campaign: staged rollouts whose canary group fails (every
canary device rejects the update, rolls it back, or never answers) must
stop before the next group starts, in every trial (rollout_auto_stops).

Each trial: a fresh rollout of one update to the stand-in fleet of
ictl.service.rollout_rig (real mosquitto, device stand-ins), targets in a
random order, a canary of 1 to 3 devices, exponential growth; the engine
runs it; the trial passes when the rollout stopped itself, no device outside
the canary was offered the update (none of their stand-ins received
metadata), and the reason names the failures. `make test` runs two trials
(tests/host/test_service_rollout.py); `ictl soak --only rollout` runs
--rollout-trials (default 20)."""
import random
import tempfile
import time

from ictl.service import rollout
from ictl.service.rollout_rig import RolloutRig

MODES = ("bad_signature", "rolled_back", "silent")


def add_args(p):
    p.add_argument("--rollout-trials", type=int, default=20, help="rollout campaign: trials (default 20)")
    p.add_argument("--rollout-devices", type=int, default=10, help="rollout campaign: stand-in devices (default 10)")


def trials(n, devices=10, seed=1, tmp=None, timeout=60):
    """Run n trials; returns [(passed, detail, seconds to stop)]."""
    rnd = random.Random(seed)
    out = []
    with tempfile.TemporaryDirectory() as own, RolloutRig(tmp or own, n=devices) as rig:
        archive = rig.update_archive()
        eng = rig.engine(tick_s=0.1)
        try:
            for i in range(n):
                out.append(_trial(rig, eng, archive, rnd, i, timeout))
        finally:
            eng.stop()
    return out


def _trial(rig, eng, archive, rnd, i, timeout):
    db = rig.db
    ids = [d.id for d in rig.devices]
    rnd.shuffle(ids)
    canary = rnd.randint(1, 3)
    silent = i % 3 == 2           # every third trial: a canary that never answers (times out)
    for k, dev in enumerate(ids):
        r = rig.responders[dev]
        r.metadata = 0
        r.fail = ("silent" if silent else rnd.choice(MODES[:2])) if k < canary else None
    r = rollout.create(db, archive, {"devices": ids}, {"canary": canary, "rate": "exponential", "factor": 2,
                                                         "group_timeout_s": 5, "name": "trial %d" % i}, "soak")
    rollout.start(db, r["id"], "soak")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        eng.tick(db)
        st = rollout.status(db, r["id"])
        if st["state"] not in ("running", "paused"):
            break
        time.sleep(0.1)
    took = time.monotonic() - t0
    time.sleep(0.3)     # a late offer would reach a stand-in by now
    later = [d for d in st["devices"] if d["group_idx"] > 0]
    offered_later = [d["device_id"] for d in later if d["offered_at"] is not None
                     or rig.responders[d["device_id"]].metadata]
    ok = st["state"] == "stopped" and not offered_later and "fail" in (st["stop_reason"] or "")
    detail = "trial %d: canary %d (%s) -> %s (%s); later groups offered: %s" % (
        i, canary, "silent" if silent else "rejecting/rolling back", st["state"], st["stop_reason"],
        ", ".join(offered_later) or "none")
    return ok, detail, took


def run(fig, args):
    res = trials(args.rollout_trials, args.rollout_devices)
    bad = [d for ok, d, _ in res if not ok]
    for d in bad:
        print("  " + d)
    fig.add("rollout_auto_stops", round(sum(ok for ok, _, _ in res) / len(res), 4), "fraction",
            "%d trials, %d stand-in devices on mosquitto: a rollout whose canary group fails (rejects, rolls back "
            "or times out after 5 s) stopped itself before any later group was offered the update; max %.1f s "
            "from start to stop" % (len(res), args.rollout_devices, max(t for _, _, t in res)))
    return len(bad)
