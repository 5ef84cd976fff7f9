"""A rollout over the real broker: mosquitto with mutual TLS, the device's
hardened MQTT client on the unix port feeding ironclad.update, and the host's
Rollout (paho-mqtt, operator identity fleet-updates) serving chunk requests,
falling back to the full image on base_mismatch, and collecting the reports."""
import io
import os
import shutil

import pytest

from ictl.sim.updatelab import Fleet, run_mqtt_device
from ictl import broker as fleet_broker
from ictl import image as app_image
from ictl import pki
from ictl import update as host_update
from ictl.sim import factory
from test_update import app_tree

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def br(tmp_path_factory):
    b = fleet_broker.Broker(tmp_path_factory.mktemp("broker"), operators=(pki.CONSOLE_ID, host_update.UPDATER_ID))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def device(tmp_path, br, name, image):
    f = Fleet(tmp_path, name)
    factory.flash_image(f.devdir, image, "app_a")
    ca = br.load_ca()
    return f, pki.issue_client_cert(ca, f.dev_key.public_key(), name), ca


def test_rollout_delta_fallback_and_confirm(tmp_path, br):
    root = str(tmp_path)
    key_path = os.path.join(root, "sign.pem")
    app_image.keygen(key_path)
    key = app_image.load_private(key_path)
    kid = app_image.key_id_for(key.public_key())
    v1 = app_image.build(app_tree(root, "v1"), key, kid, "1.0.0", 1, "esp32-sim")
    v1b = app_image.build(app_tree(root, "v1b", "\nX = 1\n"), key, kid, "1.0.1", 1, "esp32-sim")
    v2 = app_image.build(app_tree(root, "v2", "\n\ndef added(x):\n    return x + 1\n"), key, kid, "1.1.0", 2,
                         "esp32-sim")
    # d1 runs v1 (gets the delta); d2 runs another build (base mismatch: full image).
    devs, procs, certs = [], [], []
    for name, img in (("d1", v1), ("d2", v1b)):
        d = os.path.join(root, name)
        os.makedirs(d)
        shutil.copy(key_path, os.path.join(d, "sign.pem"))
        f, cert, ca = device(d, br, name, img)
        devs.append(f)
        certs.append(cert)
        procs.append(run_mqtt_device(f, br, pki.cert_der(cert), pki.key_der(f.dev_key), pki.cert_der(ca.cert)))
    out = io.StringIO()
    res = host_update.rollout([(f.dev_id, c) for f, c in zip(devs, certs)], v1, v2, br, key, kid, out=out,
                              timeout=120, until=("applied",))
    logs = [p.communicate(timeout=60)[0] for p in procs]
    st = res["devices"]
    assert st["d1"]["state"] == "applied" and st["d1"]["kind"] == "delta", (st, logs)
    assert st["d2"]["state"] == "applied" and st["d2"]["kind"] == "full", (st, logs)
    assert "base_mismatch" in logs[1]
    assert "rollout [" in out.getvalue() and "100%" in out.getvalue()
    for p in procs:
        assert p.returncode == -9  # reset after the switch
    # Both reboot into v2 on trial, pass their health check and confirm; the
    # rollout sees "confirmed".
    procs = [run_mqtt_device(f, br, pki.cert_der(c), pki.key_der(f.dev_key), pki.cert_der(br.load_ca().cert),
                             confirm=True, seconds=20) for f, c in zip(devs, certs)]
    logs = [p.communicate(timeout=60)[0] for p in procs]
    for log in logs:
        assert '"state": "trial"' in log and '"state": "confirmed"' in log, log
    for f in devs:
        st = factory.read_bootstate(f.devdir)
        assert st["active"] == "app_b" and not st["trial"]
