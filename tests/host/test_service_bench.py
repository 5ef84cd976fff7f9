"""A reduced slice of the service benchmark (bench_service): the same code
path with small bursts, so `make bench` cannot rot. Figures are not checked
here (benchmarks are not tests); that every burst is stored is."""
import os
import shutil

import pytest

from ictl.measure import bench_service
from ictl import broker as fleet_broker
from ictl.measure.figures import Figures

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto") and not any(
    os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES), reason="mosquitto not installed")


def test_bench_service_slice(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_service, "BURST", 80)
    monkeypatch.setattr(bench_service, "ROUNDS", 1)
    monkeypatch.setattr(bench_service, "DEVICES", 4)
    fig = Figures(str(tmp_path / "bench.json"))
    bench_service.run(fig, str(tmp_path), None)
    assert fig.data["ingest_rate_ratio"]["value"] > 0
    assert "ingest_workers_ratio" in fig.data or not bench_service.pgserver.available()
