"""Every `ictl bench` area that no other test runs, run whole (they are
short), so that `make bench` cannot rot unseen: each must finish and give
its figures as numbers with a unit and a detail. (A bench area failed on a
heap too small for the stand-ins once; nothing in `make test` saw it.)
Benchmarks are not tests: no figure's value is judged here."""
import json
import os
import subprocess
import sys

import pytest

from mphelp import ROOT

pytestmark = pytest.mark.timeout(600)

# The areas the service, web and delta tests already run slices of are left out.
QUICK = {
    "telemetry": ("aead_overhead_bytes", "aead_ratio"),
    "identity": ("keygen_csr_ms", "provision_seconds"),
    "platform": ("board_boot_ratio", "flash_copy_ratio"),
    "boot": ("boot_to_main_ratio", "boot_verify_peak_heap_kib", "boot_verify_ratio"),
    "firmware": ("firmware_partition_headroom_kib",),
}
LONGER = {
    "agent": ("agent_app_heap_kib", "agent_code_heap_kib", "agent_steady_heap_kib"),
    "mqtt": ("mqtt_client_steady_heap_kib", "mqtt_qos1_rate_ratio"),
}


def _bench(tmp_path, areas):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "ictl", "bench", "--out", str(out)]
    for a in areas:
        cmd += ["--only", a]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    figs = json.loads(out.read_text())
    for area, names in areas.items():
        for name in names:
            f = figs.get(name)
            assert f is not None, "bench %s gave no %s: %s" % (area, name, sorted(figs))
            assert isinstance(f["value"], (int, float)) and not isinstance(f["value"], bool), (name, f)
            assert f["unit"] and len(f["detail"]) > 10, (name, f)


def test_quick_bench_areas_run(tmp_path):
    _bench(tmp_path, QUICK)


def test_agent_and_mqtt_bench_areas_run(tmp_path):
    _bench(tmp_path, LONGER)
