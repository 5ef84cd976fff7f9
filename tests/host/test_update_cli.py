"""`ictl update create | inspect | publish` as an operator runs them: files
on disk, one-line errors, and a publish through the broker to a device."""
import os
import shutil
import subprocess
import sys

import pytest

from ictl import ROOT
from ictl.sim.updatelab import Fleet, run_mqtt_device
from ictl import broker as fleet_broker
from ictl import image as app_image
from ictl import pki
from ictl import update as host_update
from ictl.sim import factory
from test_update import app_tree

pytestmark = pytest.mark.timeout(240)
ICTL = [sys.executable, "-m", "ictl"]


def ictl(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    return subprocess.run(ICTL + list(args), capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli"))
    key_path = os.path.join(root, "sign.pem")
    assert ictl("image", "keygen", key_path).returncode == 0
    key = app_image.load_private(key_path)
    kid = app_image.key_id_for(key.public_key())
    paths = {}
    for name, ver, extra in (("v1", "1.0.0", ""), ("v2", "1.1.0", "\nY = 2\n")):
        paths[name] = os.path.join(root, name + ".img")
        with open(paths[name], "wb") as f:
            f.write(app_image.build(app_tree(root, name, extra), key, kid, ver, 1, "esp32-sim"))
    return root, key_path, paths


def test_create_inspect_and_errors(setup, tmp_path):
    root, key_path, paths = setup
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_dir = str(tmp_path / "pki")
    ca = pki.init_ca(ca_dir, dev=True)
    certs = []
    for dev in ("d1", "d2"):
        cert = pki.issue_client_cert(ca, ec.generate_private_key(ec.SECP256R1()).public_key(), dev)
        p = str(tmp_path / (dev + ".crt"))
        pki.write_cert_pem(p, cert)
        certs.append("%s=%s" % (dev, p))
    out = str(tmp_path / "upd")
    r = ictl("update", "create", "--image", paths["v2"], "--base", paths["v1"], "--key", key_path,
             "--device", certs[0], "--device", certs[1], "-o", out, "--compression", "crle")
    assert r.returncode == 0, r.stderr
    assert "delta" in r.stdout and "full" in r.stdout
    for part in ("delta", "full"):
        assert sorted(os.listdir(os.path.join(out, part, "meta"))) == ["d1.bin", "d2.bin"]
    # No key material on disk: only the wrapped key inside the signed metadata.
    upd, metas = host_update.Update.load(os.path.join(out, "delta"))
    assert upd._key is None and upd.fields["patch"]["comp"] == "crle"
    r = ictl("update", "inspect", out)
    assert r.returncode == 0 and "kind          delta" in r.stdout and "['d1', 'd2']" in r.stdout, r.stdout
    # One-line errors, exit status 2.
    for args, words in (
            (["--image", paths["v2"], "--key", key_path, "-o", out], "no devices"),
            (["--image", paths["v2"], "--key", key_path, "-o", out, "--device", "d1"], "ID=CERT"),
            (["--image", paths["v2"], "--key", key_path, "-o", out, "--device", "d1=/nonexistent"], "not found"),
            (["--image", "/nonexistent", "--key", key_path, "-o", out, "--device", certs[0]], "cannot read"),
            (["--image", paths["v2"], "--key", key_path, "-o", out, "--device", certs[0], "--target", "fw"],
             "--version"),
            (["--image", paths["v2"], "--key", paths["v1"], "-o", out, "--device", certs[0]], "PEM")):
        r = ictl("update", "create", *args)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = ictl("update", "publish", str(tmp_path), "--broker", str(tmp_path / "nobroker"))
    assert r.returncode == 2 and "no broker state" in r.stderr


def test_publish_through_the_broker(setup, tmp_path):
    root, key_path, paths = setup
    b = fleet_broker.Broker(str(tmp_path / "broker"), operators=(pki.CONSOLE_ID, host_update.UPDATER_ID))
    b.start()
    try:
        shutil.copy(key_path, str(tmp_path / "sign.pem"))
        f = Fleet(tmp_path, "d1")
        with open(paths["v1"], "rb") as fh:
            factory.flash_image(f.devdir, fh.read(), "app_a")
        ca = b.load_ca()
        cert = pki.issue_client_cert(ca, f.dev_key.public_key(), "d1")
        cp = str(tmp_path / "d1.crt")
        pki.write_cert_pem(cp, cert)
        out = str(tmp_path / "upd")
        r = ictl("update", "create", "--image", paths["v2"], "--base", paths["v1"], "--key", key_path,
                 "--device", "d1=" + cp, "-o", out)
        assert r.returncode == 0, r.stderr
        dev = run_mqtt_device(f, b, pki.cert_der(cert), pki.key_der(f.dev_key), pki.cert_der(ca.cert))
        r = ictl("update", "publish", out, "--broker", b.state_dir, "--timeout", "90")
        log = dev.communicate(timeout=60)[0]
        assert r.returncode == 0, (r.stdout, r.stderr, log)
        assert "rollout [" in r.stderr and "100%" in r.stderr
        assert "d1" in r.stdout and "applied" in r.stdout and "delta" in r.stdout and "1 of 1 devices done" in r.stdout
        assert dev.returncode == -9
    finally:
        b.stop()
