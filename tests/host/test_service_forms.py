"""The pages' input checks (ictl.service.ui.forms): every query and form
value is refused with a message naming the field, never passed on."""
import pytest

from ictl.service.ui import forms

NOW = 1_800_000_000.0


def test_chart_range():
    assert forms.chart_range({}, NOW) == (NOW - 86400, NOW, "24h")
    assert forms.chart_range({"range": "7d"}, NOW) == (NOW - 7 * 86400, NOW, "7d")
    since, until, name = forms.chart_range({"from": "2026-01-01T00:00", "to": "2026-01-02T12:00"}, NOW)
    assert until - since == 36 * 3600 and name == "" and since == 1767225600.0  # UTC
    for args, why in (({"range": "1y"}, "range must be one of"), ({"from": "2026-01-01T00:00"}, "give both"),
                      ({"from": "x", "to": "2026-01-01T00:00"}, "from must be a date"),
                      ({"from": "2026-01-02T00:00", "to": "2026-01-01T00:00"}, "to must be after from"),
                      ({"from": "2024-01-01T00:00", "to": "2026-01-01T00:00"}, "at most 366 days")):
        with pytest.raises(forms.FormError, match=why):
            forms.chart_range(args, NOW)


def test_numbers_text_and_device_ids():
    assert forms.integer("", "n", 1, 9, 5) == 5 and forms.integer("7", "n", 1, 9) == 7
    assert forms.number("2.5", "f", 1, 10) == 2.5
    for bad in ("1e3", "0x10", " 7 7", "9" * 13, "10"):
        with pytest.raises(forms.FormError, match="^n must be"):
            forms.integer(bad, "n", 1, 9)
    with pytest.raises(forms.FormError, match="control characters"):
        forms.text("a\x00b", "search")
    with pytest.raises(forms.FormError, match="longer than 64"):
        forms.text("x" * 65, "search")
    assert forms.device_list("dev-1, dev-2\ndev-1") == ["dev-1", "dev-2"]
    for bad in ("dev-1 <svg>", "fleet-console", "../x"):
        with pytest.raises(forms.FormError, match="devices: device id"):
            forms.device_list(bad)
    assert forms.page({"n": "25", "offset": "50"}) == (25, 50)
    with pytest.raises(forms.FormError):
        forms.page({"n": "201"})
