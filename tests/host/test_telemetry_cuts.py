"""The nonce counter under power cuts: cut before (and torn at) every flash
operation while a device hands out nonce values; the next boot must start
above every value used before (tools/ictl/measure/soak_spool.py, `make soak` runs
more values and tears)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mphelp  # noqa: E402,F401 (puts tools/ on sys.path)
from ictl.measure import soak_spool  # noqa: E402


def test_nonce_never_reused_across_power_cuts(record_property):
    points, failures = soak_spool.nonce_sweep(values=24, block=4, tear_bytes=(5,))
    record_property("report", "nonce power-cut sweep: %d cuts, %d reuses" % (points, len(failures)))
    assert points >= 24
    assert failures == []
