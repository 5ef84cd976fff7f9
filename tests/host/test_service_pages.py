"""The console's pages over real HTTPS (ictl.service.ui.pages): what a
compromised device sends reaches every page as text, never as markup; bad
query and form values are refused with a message and change nothing.

The hostile device is the device code itself (ironclad.events,
ironclad.telemetry on the unix port, tests/device/service_hostile_peer.py)
with a real key and certificate, talking to a real mosquitto over mutual
TLS; CORE's ingest worker (ictl.service.ingest) opens, checks and stores
what it sends, and the web server shows it."""
import html
import json
import os
import re
import time

import pytest

from ictl import pki
from ictl.service import ingest
from ictl.telemetry_rig import PEER_HEAP_KIB, PEER_PATH, Peer, Rig
from ictl.faults import MICROPYTHON
from service_ui_rig import Console, assert_escaped, escaped

DEVICE = "dev-0042"
# Each field fits the device's record (kind 15, reason 23, detail 39 bytes).
EVENTS = [["<svg onload=x>", "<img src=x onerror=a()>", "rejected", '"><script>alert("x1")</script>'],
          ["{{7*7}}", "{% if 1 %}T{% endif %}", "failed", "<svg onload=alert(3)>"]]
FIELDS = ['<script>alert("x1")</script>', '"><img src=x onerror=alert(2)>', "{{7*7}}"]
TEXT_VALUE = "<svg onload=alert(3)>"
UPDATE_ID = '<script>alert("x1")</script>'
UPDATE_REASON = '"><img src=x onerror=alert(2)>'


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A console whose database holds what the hostile device sent."""
    tmp = tmp_path_factory.mktemp("pages")
    with Rig(tmp, DEVICE) as rig:
        br = rig.broker
        kp, cp = pki.ensure_console_cert(pki.load_ca(br.pki_dir))
        with Console(tmp / "console", pki_dir=br.pki_dir) as con:
            w = ingest.Ingest(con.db_url, rig.fleet_key, br.ca_path, br.prefix, br.host, br.port, cp, kp).start()
            try:
                cfg = {"dir": rig.dir, "device_id": DEVICE, "host": br.host, "port": br.port, "prefix": br.prefix,
                       "events": str(tmp / "events"), "events_spec": EVENTS, "fields": FIELDS,
                       "text_value": TEXT_VALUE, "update_id": UPDATE_ID, "update_reason": UPDATE_REASON}
                path = tmp / "hostile.json"
                path.write_text(json.dumps(cfg))
                env = dict(os.environ, MICROPYPATH=PEER_PATH, ESPSIM_DIR=rig.devdir)
                env.pop("ESPSIM_FAULT", None)
                peer = Peer([MICROPYTHON, "-X", "heapsize=%dK" % PEER_HEAP_KIB, "-c",
                             "import service_hostile_peer; service_hostile_peer.main(%r)" % str(path)], env, str(tmp))
                rig.peers.append(peer)
                peer.wait_for("DONE", timeout=120)
                _wait(lambda: w.counts["readings"] >= 4 and w.counts["events"] >= 2 and w.counts["reports"] >= 1, 30,
                      "ingest to store the device's messages (%s)" % w.counts)
            finally:
                w.stop()
            con.s = con.login()
            yield con


def test_device_data_shown_as_text_everywhere(hostile):
    con, s = hostile, hostile.s
    pages = {p: con.get(s, p) for p in ("/", "/events", "/devices/" + DEVICE, "/devices/%s?range=7d" % DEVICE)}
    dev_page = pages["/devices/" + DEVICE]
    for kind, reason, outcome, detail in EVENTS:
        assert_escaped(dev_page, (kind, reason, detail))
        assert_escaped(pages["/events"], (kind, reason, detail))
    assert_escaped(dev_page, (UPDATE_ID, UPDATE_REASON))  # the update history
    # The rollback alarm quotes the update id: in the banner on every page.
    for p, page in pages.items():
        assert 'id="alarm-banner"' in page, p
        assert_escaped(page, (UPDATE_ID,))
    # The chart: field names are legend text in an SVG served as an image.
    svg = con.get(s, "/devices/%s/chart.svg?range=24h" % DEVICE)
    for f in FIELDS:
        assert html.escape(f, quote=True).replace("&#x27;", "&#39;") + " (" in svg, f  # legend: name (n points)
    assert "<script" not in svg and "onerror=" not in svg.replace("onerror=alert(2)&gt;", "") and "<svg onload" not in svg


def test_bad_query_values_refused(hostile):
    con, s = hostile, hostile.s
    for path in ("/?status=<script>", "/?n=0", "/?n=1000000", "/?offset=-1", "/?q=" + "x" * 200,
                 "/devices/%s?range=2y" % DEVICE, "/devices/%s?from=yesterday&to=now" % DEVICE,
                 "/devices/%s?from=2026-01-02T00:00&to=2026-01-01T00:00" % DEVICE, "/events?device=<svg>"):
        page = con.get(s, path, status=400)
        assert "<script>" not in page and "<svg>" not in page
    con.get(s, "/devices/no-such-device", status=404)
    con.get(s, "/devices/%3Csvg%3E", status=404)
