"""The readings chart (ictl.service.ui.chart): server-rendered SVG, device
field names escaped, values used only as numbers, many points reduced."""
import xml.etree.ElementTree as ET

import pytest

from ictl.service.ui import chart

HOSTILE = ('<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "<svg onload=alert(1)>",
           "{{7*7}}", "{% for x in y %}", "a&b", "' onmouseover='alert(1)")


def _parse(svg):
    return ET.fromstring(svg)  # well-formed XML, or this raises


def test_hostile_field_names_are_text_not_markup():
    series = {name: [(100 + i, i) for i in range(5)] for name in HOSTILE}
    svg = chart.render(series, 100, 200, title='<script>x</script>')
    root = _parse(svg)
    ns = "{http://www.w3.org/2000/svg}"
    # No element or attribute came from a device: only the SVG we write.
    tags = {el.tag for el in root.iter()}
    assert tags <= {ns + t for t in ("svg", "title", "rect", "line", "text", "polyline", "circle")}, tags
    for el in root.iter():
        assert not any(a.lower().startswith("on") or a == "style" for a in el.attrib), el.attrib
    texts = " ".join(el.text or "" for el in root.iter(ns + "text"))
    for name in HOSTILE:
        assert name in texts  # shown as the text it is...
    for raw in ("<script>", "<img", "<svg onload", "' onmouseover"):
        assert raw not in svg.split(">", 1)[1]  # ...never as markup after the root tag


def test_values_only_as_numbers():
    series = {"temp_c": [(1, 20.0), (2, "<script>"), (3, float("nan")), (4, float("inf")), (5, True), (6, 22.0)]}
    svg = chart.render(series, 0, 10)
    assert "<script>" not in svg and "nan" not in svg.lower() and "inf" not in svg.lower()
    assert "(2 points)" in svg


def test_many_points_reduced_to_the_width():
    pts = [(i, i % 7) for i in range(200000)]
    svg = chart.render({"x": pts}, 0, 200000, width=400)
    poly = [el for el in _parse(svg).iter("{http://www.w3.org/2000/svg}polyline")][0]
    n = len(poly.get("points").split())
    assert 300 <= n <= 400 - 64 - 16, n


def test_range_filters_and_empty_range():
    svg = chart.render({"x": [(5, 1.0), (50, 2.0)]}, 0, 10)
    assert "(1 point)" in svg
    assert "no readings in this range" in chart.render({"x": []}, 0, 10)
    with pytest.raises(ValueError):
        chart.render({"x": []}, 10, 10)


def test_each_field_its_own_axis():
    # An uptime in ms beside a temperature: the temperature keeps its scale.
    pts = [(i, 18 + (i % 5)) for i in range(100)]
    svg = chart.render({"temp_c": pts, "uptime_ms": [(t, t * 1000) for t, _ in pts]}, 0, 100)
    root = _parse(svg)
    labels = [el.text for el in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "temp_c (100 points)" in labels and "uptime_ms (100 points)" in labels
    assert {"18", "20", "22"} <= set(labels), labels  # temperature ticks
    assert any(l and l.isdigit() and int(l) >= 50000 for l in labels), labels  # uptime ticks
