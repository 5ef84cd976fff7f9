"""The fleet simulation, reduced slice of `make soak`'s campaign: a delta
rollout to a few virtual devices with a power cut mid-download and a broker
restart mid-rollout; every device ends on v2 or says why, none unbootable."""
import os

from ictl.sim import fleet


def test_fleet_rollout_with_faults(tmp_path):
    png = str(tmp_path / "timeline.png")
    res = fleet.simulate(4, str(tmp_path / "fleet"), cut_share=0.25, broker_restart=True, timeout=300, png=png)
    assert res["bricked"] == []
    assert len(res["faults"]["cuts"]) == 1 and res["faults"]["broker_restart"] is not None
    for nm, r in res["results"].items():
        assert r["boots"] in ("2.0.0", "1.0.0"), (nm, r)
        if r["boots"] == "1.0.0":
            assert r["state"] in ("rolled_back", "rejected") and r["reason"], (nm, r)
        else:
            assert r["state"] == "confirmed", (nm, r)
    assert sum(1 for r in res["results"].values() if r["boots"] == "2.0.0") >= 3
    assert 0 < res["bytes"] < res["full_bytes"]  # the delta costs less than full images
    assert os.path.getsize(png) > 10000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
