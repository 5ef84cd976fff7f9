"""Updates end to end on a simulated device, the fleet's side played from
files (tests/host/deltahelp.py UPDATE_DRIVER): delta and full app updates,
trial boot and confirmation, resume after a reboot mid-download, the
firmware OTA target, and bad input rejected with the running slot untouched."""
import glob
import os

import pytest

from deltahelp import Fleet, mphelp, sim_device
from ictl import image as app_image
from ictl.update import Update

SIGKILL = mphelp.SIGKILL_RC


def app_tree(root, name, extra=""):
    """A small app: main.py and real modules (the non-viper ironclad ones)."""
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "main.py"), "w") as f:
        f.write("print('app %s')\n" % name)
    for p in sorted(glob.glob(os.path.join(mphelp.ROOT, "lib", "ironclad", "ironclad", "*.py"))):
        text = open(p).read()
        if "viper" in text or os.path.basename(p) == "__init__.py":
            continue
        with open(os.path.join(d, "m_" + os.path.basename(p)), "w") as f:
            f.write(text + (extra if p.endswith("cbor.py") else ""))
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("apps"))
    key_path = os.path.join(root, "sign.pem")
    app_image.keygen(key_path)
    key = app_image.load_private(key_path)
    kid = app_image.key_id_for(key.public_key())
    src1 = app_tree(root, "v1")
    src2 = app_tree(root, "v2", "\n\ndef added(x):\n    return x + 1\n")
    v1 = app_image.build(src1, key, kid, "1.0.0", 1, "esp32-sim")
    v2 = app_image.build(src2, key, kid, "1.1.0", 2, "esp32-sim")
    return {"key_path": key_path, "v1": v1, "v2": v2, "src2": src2, "root": root}


def fleet(tmp_path, images, name="dev1"):
    import shutil

    shutil.copy(images["key_path"], os.path.join(str(tmp_path), "sign.pem"))
    f = Fleet(tmp_path, name)
    app_image.flash_image(f.devdir, images["v1"], "app_a")
    return f


def slot(devdir, label, n):
    cfg = sim_device.load(devdir)
    p = [q for q in cfg["partitions"] if q["label"] == label][0]
    with open(os.path.join(devdir, "flash.bin"), "rb") as fl:
        fl.seek(p["offset"])
        return fl.read(n)


def states(reports):
    return [r["state"] + ("/" + r["reason"] if "reason" in r else "") for r in reports]


def test_delta_app_update_trial_and_confirm(tmp_path, images):
    f = fleet(tmp_path, images)
    upd = Update.create(images["v2"], base=images["v1"])
    meta = f.save(upd, upd.metadata(f.dev_id, f.dev_pub, f.sign_key, f.key_id), "u1")
    rc, lines, reps = f.run(send=[meta], updates=[upd])
    assert rc == SIGKILL, f.last.stdout + f.last.stderr  # machine.reset() after the switch
    assert states(reps)[0] == "downloading" and states(reps)[-1] == "applied", reps
    assert slot(f.devdir, "app_b", len(images["v2"])) == images["v2"]
    st = app_image.read_bootstate(f.devdir)
    assert st["active"] == "app_b" and st["trial"] and st["fallback"] == "app_a"
    # Next boot: the new image runs on trial; the health check confirms it.
    rc, lines, reps = f.run(confirm=True)
    assert rc == 0, f.last.stdout + f.last.stderr
    assert "BOOT app_b %d" % app_image.parse_version("1.1.0") in lines
    assert states(reps) == ["trial", "confirmed"]
    st = app_image.read_bootstate(f.devdir)
    assert st["active"] == "app_b" and not st["trial"] and st["floor"] == 2
