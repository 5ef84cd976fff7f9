"""The bench/soak goal table: goals compare the right way, and the table shows each figure."""
import json

from ictl.measure import goals


def test_verdicts():
    assert goals.verdict("aead_ratio", 1.9) == "met"
    assert goals.verdict("aead_ratio", 2.1) == "MISSED"
    assert goals.verdict("mqtt_qos1_rate_ratio", 0.9) == "MISSED"
    assert goals.verdict("fleet_bricked", 1) == "MISSED"
    assert goals.verdict("fleet_bricked", 0) == "met"
    assert goals.verdict("board_boot_ratio", 5.0) == ""


def test_table(tmp_path):
    p = tmp_path / "bench.json"
    p.write_text(json.dumps({"aead_ratio": {"value": 2.5, "unit": "ratio", "detail": "x"},
                             "flash_copy_ratio": {"value": 11.0, "unit": "ratio", "detail": "y"}}))
    lines = goals.table(str(p))
    assert lines[0].split()[:4] == ["figure", "value", "unit", "goal"]
    assert lines[1].split() == ["aead_ratio", "2.5", "ratio", "<=", "2.0", "MISSED"]
    assert lines[2].split() == ["flash_copy_ratio", "11", "ratio", "-"]
