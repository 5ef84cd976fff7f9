"""The reduced slice of `make soak`'s MQTT campaigns (tools/ictl/measure/soak_mqtt.py):
mutated broker packets in-process and over TLS, and QoS 1 through broker
restarts. Same code as the full campaign, smaller counts."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from ictl import pki  # noqa: E402
from ictl.measure import soak_mqtt  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d, dev=True)
    return str(d)


def test_fuzz_in_process(pki_dir, tmp_path):
    st = soak_mqtt.fuzz_inprocess(pki_dir, str(tmp_path), 6000, seed=101, chunk=3000)
    assert st["inputs"] == 6000
    assert st["failures"] == 0, st["notes"]
    # the mutations reach past the first check: some inputs parse cleanly
    assert st["clean"] > 300, st
    assert st["live"] <= soak_mqtt.BUDGET


def test_fuzz_over_tls(pki_dir, tmp_path):
    st = soak_mqtt.fuzz_socket(pki_dir, str(tmp_path), 12, seed=7)
    assert st["failures"] == 0, st["notes"]
    assert st["packets"] == 12 * 5


def test_qos1_through_broker_restarts(tmp_path):
    done, lost, notes = soak_mqtt.restarts(str(tmp_path), 400, 2)
    assert done == 2
    assert lost == 0, notes
    assert "device sent" not in " ".join(notes), notes
