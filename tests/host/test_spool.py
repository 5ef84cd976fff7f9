"""The store-and-forward spool under faults: power cut before (and torn at)
every flash operation of a device queueing and delivering readings on its
littlefs; and a real mosquitto restarted, and the device reset, while it
spools readings for the fleet console (tools/ictl/measure/soak_spool.py runs both
at full size in `make soak`)."""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mphelp  # noqa: E402,F401 (puts tools/ on sys.path)
from ictl import broker as fleet_broker  # noqa: E402
from ictl.measure import soak_spool  # noqa: E402

HAVE_MOSQUITTO = bool(shutil.which("mosquitto")) or any(os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES)


def test_spool_survives_a_power_cut_at_every_flash_operation(record_property):
    points, failures = soak_spool.spool_sweep(puts=12, tear_bytes=(5,))
    record_property("report", "spool power-cut sweep: %d cuts, %d failures" % (points, len(failures)))
    assert points > 50
    assert failures == []


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed")
def test_nothing_lost_across_broker_restart_and_device_reset(tmp_path, record_property):
    restarts, reboots, n, lost, disorder = soak_spool.broker_campaign(tmp_path, restarts=1, reboots=1, readings=12)
    record_property("report", "spool: %d readings through %d broker restart(s) and %d reset(s), %d lost"
                    % (n, restarts, reboots, len(lost)))
    assert n >= 12
    assert lost == [] and disorder == []
