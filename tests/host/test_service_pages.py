"""The console's pages over real HTTPS (ictl.service.ui.pages): what a
compromised device sends reaches every page as text, never as markup; bad
query and form values are refused with a message and change nothing.

The hostile device is the device code itself (ironclad.events,
ironclad.telemetry on the unix port, tests/device/service_hostile_peer.py)
with a real key and certificate, talking to a real mosquitto over mutual
TLS; CORE's ingest worker (ictl.service.ingest) opens, checks and stores
what it sends, and the web server shows it."""
import hashlib
import html
import json
import os
import queue
import re
import time

import cbor2
import pytest

from ictl import ca as fleet_ca
from ictl import console, fleetkeys, pki
from ictl.service import audit, fleetops, ingest
from ictl.service.rollout_rig import RolloutRig
from ictl.sim.telemetry_rig import PEER_HEAP_KIB, PEER_PATH, Peer, Rig
from ictl.sim.faults import MICROPYTHON
from service_ui_rig import Console, assert_escaped, escaped

DEVICE = "dev-0042"
# Each field fits the device's record (kind 15, reason 23, detail 39 bytes).
EVENTS = [["<svg onload=x>", "<img src=x onerror=a()>", "rejected", '"><script>alert("x1")</script>'],
          ["{{7*7}}", "{% if 1 %}T{% endif %}", "failed", "<svg onload=alert(3)>"]]
FIELDS = ['<script>alert("x1")</script>', '"><img src=x onerror=alert(2)>', "{{7*7}}"]
TEXT_VALUE = "<svg onload=alert(3)>"
UPDATE_ID = '<script>alert("x1")</script>'
UPDATE_REASON = '"><img src=x onerror=alert(2)>'
PROVISION_ERROR = "board said <svg onload=alert(3)>"


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
    rig = Rig(tmp, DEVICE)
    rig.broker.operators += (fleetops.SERVICE_ID,)  # commands are published as this identity
    with rig:
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
            # The device's certificate in the CA inventory (as `ictl provision`
            # records it), imported as `ictl serve` does.
            fleet_ca.Inventory.of(pki.load_ca(br.pki_dir)).record_issued(rig.cert, DEVICE, "uid-42", "test", None)
            # ... and the provisioning log, one failure quoting what a board said.
            with open(os.path.join(br.pki_dir, "provision.jsonl"), "a") as f:
                f.write(json.dumps({"device_id": DEVICE, "time": "2026-12-01T10:00:00+00:00", "outcome": "failed",
                                    "operator": "tech-1", "error": PROVISION_ERROR}) + "\n")
            fleetops.sync_pki(con.db, br.pki_dir)
            old = fleetops.configure(fleetops.Ops(br.pki_dir, rig.fleet_key, br.host, br.port, br.prefix, br.state_dir))
            try:
                yield con
            finally:
                fleetops.configure(old).close()


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
    prov = con.get(s, "/provisioning")
    assert_escaped(prov, (PROVISION_ERROR, "tech-1", "failed"))
    # The chart: field names are legend text in an SVG served as an image.
    svg = con.get(s, "/devices/%s/chart.svg?range=24h" % DEVICE)
    for f in FIELDS:
        assert html.escape(f, quote=True).replace("&#x27;", "&#39;") + " (" in svg, f  # legend: name (n points)
    assert "<script" not in svg and "onerror=" not in svg.replace("onerror=alert(2)&gt;", "") and "<svg onload" not in svg


def test_bad_query_values_refused(hostile):
    con, s = hostile, hostile.s
    for path in ("/?status=<script>", "/?n=0", "/?n=1000000", "/?offset=-1", "/?q=" + "x" * 200,
                 "/devices/%s?range=2y" % DEVICE, "/devices/%s?from=yesterday&to=now" % DEVICE,
                 "/devices/%s?from=2026-01-02T00:00&to=2026-01-01T00:00" % DEVICE, "/events?device=<svg>", "/events?outcome=<b>"):
        page = con.get(s, path, status=400)
        assert "<script>" not in page and "<svg>" not in page
    # Paging: two events, one per page.
    first = con.get(s, "/events?n=25&offset=0&device=" + DEVICE)
    assert "older" not in first and "newer" not in first  # both on one page
    one = con.get(s, "/events?n=1")
    assert 'href="/events?device=&amp;outcome=&amp;offset=1&amp;n=1">older' in one and "newer" not in one
    two = con.get(s, "/events?n=1&offset=1")
    assert 'href="/events?device=&amp;outcome=&amp;offset=0&amp;n=1">&larr; newer' in two and "older" not in two
    # Filtered by outcome: the failed one only.
    failed = con.get(s, "/events?outcome=failed").split('id="events"')[1]
    assert escaped(EVENTS[1][3]) in failed and escaped(EVENTS[0][3]) not in failed  # details of the two
    con.get(s, "/devices/no-such-device", status=404)
    con.get(s, "/devices/%3Csvg%3E", status=404)


def _count(con, sql, params=()):
    return con.db.one(sql, params)["n"]


def test_actions_refused_without_change_then_done(hostile):
    """Wipe: refused without re-authentication (401) and with the wrong
    confirmation (400): no command stored or sent; then done with both. A
    command with a bad argument is refused; a malformed update upload is
    refused with the reason and stores no rollout; an alarm is acknowledged;
    a user is created (enrolment link), its role changed, the last
    administrator kept. Each is in the audit trail with who and what came
    back. One test: the re-authentication at the wipe stays fresh for the
    rest (a code is accepted once; more would wait for the next step)."""
    con, s = hostile, hostile.s
    page = "/devices/" + DEVICE
    wipes = "SELECT count(*) AS n FROM commands WHERE op = 'wipe'"
    con.post(s, page + "/wipe", {"confirm_id": DEVICE}, status=401, page_path=page)
    assert _count(con, wipes) == 0
    out = con.post(s, page + "/wipe", dict(con.reauth(), confirm_id="dev-0043"), status=400, page_path=page)
    assert "type the device id" in out and _count(con, wipes) == 0
    # re-authenticated just now: the session is fresh for the next few minutes
    out = con.post(s, page + "/wipe", {"confirm_id": DEVICE}, page_path=page)
    assert "Done" in out and _count(con, wipes) == 1
    row = con.db.one("SELECT args, sent_by FROM commands WHERE op = 'wipe'")
    assert json.loads(row["args"]) == {"confirm": 0x57495045} and row["sent_by"] == "ada"

    con.post(s, page + "/command", {"op": "interval", "s": "ten"}, status=400, page_path=page)
    con.post(s, page + "/command", {"op": "format", "s": ""}, status=400, page_path=page)
    assert _count(con, "SELECT count(*) AS n FROM commands WHERE op <> 'wipe'") == 0
    assert "Done" in con.post(s, page + "/command", {"op": "interval", "s": "60"}, page_path=page)
    assert "60" in con.get(s, page).split('id="device-commands"')[1]

    bad = {"update": ("update.tgz", b"<script>not a tar</script>", "application/gzip")}
    out = con.post(s, "/rollouts/new", {"mode": "filter", "q": ""}, status=400, files=bad)
    assert "update: not a tar archive of `ictl update create` output" in out.replace("&#96;", "`")
    assert _count(con, "SELECT count(*) AS n FROM rollouts") == 0
    out = con.post(s, "/rollouts/new", {"mode": "percentage", "percent": "500"}, status=400, files=bad)
    assert "percentage must be between 1 and 100" in out

    alarm = con.db.one("SELECT id FROM alarms WHERE acked_at IS NULL")["id"]
    assert "Done" in con.post(s, "/alarms/%d/ack" % alarm, {}, page_path="/events")
    assert con.db.one("SELECT acked_by FROM alarms WHERE id = ?", (alarm,))["acked_by"] == "ada"
    assert 'id="alarm-banner"' not in con.get(s, "/events")

    # Users (the same re-authentication still fresh: one test, in order).
    out = con.post(s, "/users/new", {"username": "bob", "role": "operator"}, page_path="/users")
    link = re.search(r'id="one-time-link">([^<]+)<', out).group(1)
    assert "/enrol/" in link and con.get(con.session(), link[len(con.url):])  # the link opens the enrolment page
    bob = con.db.one("SELECT id, role FROM web_users WHERE username = 'bob'")
    assert bob["role"] == "operator"
    con.post(s, "/users/%s" % bob["id"], {"action": "role", "role": "root"}, status=400, page_path="/users")
    con.post(s, "/users/u_0000000000000000", {"action": "unlock"}, status=404, page_path="/users")
    assert "Done" in con.post(s, "/users/%s" % bob["id"], {"action": "role", "role": "viewer"}, page_path="/users")
    assert con.db.one("SELECT role FROM web_users WHERE username = 'bob'")["role"] == "viewer"
    me = con.db.one("SELECT id FROM web_users WHERE username = 'ada'")["id"]
    out = con.post(s, "/users/%s" % me, {"action": "disable"}, status=409, page_path="/users")
    assert "last administrator" in out

    # Certificate revocation: the wrong typed id changes nothing; then revoked.
    certs = "SELECT count(*) AS n FROM certificates WHERE device_id = ? AND status = 'revoked'"
    con.post(s, "/certificates/%s/revoke" % DEVICE, {"confirm_id": "dev-0043"}, status=400, page_path="/certificates")
    assert _count(con, certs, (DEVICE,)) == 0
    assert "Done" in con.post(s, "/certificates/%s/revoke" % DEVICE, {"confirm_id": DEVICE}, page_path="/certificates")
    assert _count(con, certs, (DEVICE,)) == 1
    assert "revoked (decommissioned)" in con.get(s, "/certificates")

    trail = con.get(s, "/audit?n=200")
    for action in ("refused:pages.device_wipe", "pages.device_wipe", "pages.device_command", "pages.rollout_create",
                   "pages.alarm_ack", "pages.user_create", "pages.user_change", "pages.certificate_revoke"):
        assert ">%s<" % action in trail, action
    assert "Chain verified" in con.get(s, "/audit?verify=1")


def test_rollout_pages_two_person_rule_and_controls(tmp_path):
    """Create with the two-person rule; the creator cannot approve (409,
    still awaiting approval), a second operator can; start asks for
    re-authentication; pause, resume and cancel follow the rollout's state
    and a refused transition says why. (The engine is not running: the
    browser test watches one run to the end.)"""
    rig = RolloutRig(tmp_path / "fleet", n=3)
    rig.broker.operators += (fleetops.SERVICE_ID,)  # as `ictl serve` needs it (ictl.service.runner.operators)
    with rig, Console(tmp_path / "web", pki_dir=rig.broker.pki_dir, db_url=rig.db_url) as con:
        ada = con.login()
        out = con.post(ada, "/users/new", dict(con.reauth(), username="bob", role="operator"), page_path="/users")
        con.enrol(re.search(r'id="one-time-link">[^<]*(/enrol/[^<]+)<', out).group(1), "bob")
        bob = con.login("bob")
        files = {"update": ("update.tgz", rig.update_archive(), "application/gzip")}
        out = con.post(ada, "/rollouts/new", {"mode": "list", "devices": "sim-0000\nsim-0002", "two_person": "on",
                                              "canary": "1", "rate": "constant", "group_size": "1"}, files=files)
        rid = int(re.search(r'href="/rollouts/(\d+)"', out).group(1))
        # the audit record names the upload by its size and SHA-256
        rec = [r for r in audit.entries(con.db, 50) if r["action"] == "pages.rollout_create"][0]
        upload = files["update"][1]
        assert rec["params"]["update"]["bytes"] == len(upload)
        assert rec["params"]["update"]["sha256"] == hashlib.sha256(upload).hexdigest()
        page = "/rollouts/%d" % rid
        state = lambda: con.db.one("SELECT state FROM rollouts WHERE id = ?", (rid,))["state"]  # noqa: E731
        assert state() == "awaiting_approval" and 'id="approve-form" data-states="awaiting_approval">' in con.get(ada, page)
        out = con.post(ada, page + "/approve", {}, status=409, page_path=page)
        assert "cannot approve it (two-person rule)" in out and state() == "awaiting_approval"
        assert "Done" in con.post(bob, page + "/approve", {}, page_path=page) and state() == "ready"
        con.post(bob, page + "/start", {}, status=401, page_path=page)  # no re-authentication: refused
        assert state() == "ready"
        assert "Done" in con.post(bob, page + "/start", con.reauth("bob"), page_path=page) and state() == "running"
        for action, after in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
            assert "Done" in con.post(bob, page + "/control", {"action": action}, page_path=page)
            assert state() == after
        out = con.post(bob, page + "/control", {"action": "resume"}, status=409, page_path=page)
        assert "is cancelled: cannot resume it" in out
        con.post(bob, page + "/control", {"action": "explode"}, status=400, page_path=page)
        # A viewer is shown no action it may not take (the server refuses them anyway).
        out = con.post(ada, "/users/new", {"username": "vic", "role": "viewer"}, page_path="/users")
        con.enrol(re.search(r'id="one-time-link">[^<]*(/enrol/[^<]+)<', out).group(1), "vic")
        vic = con.login("vic")
        for path in (page, "/devices/sim-0000", "/rollouts", "/events", "/certificates"):
            shown = con.get(vic, path)
            assert "<form method=\"post\"" not in shown.split("<main>")[1], path
        con.get(vic, "/users", status=403)
        con.get(vic, "/audit", status=403)
        status = json.loads(con.get(bob, page + "/status.json"))
        assert status["state"] == "cancelled" and status["total"] == 2
        assert [g["size"] for g in status["groups"]] == [1, 1]
        assert {d["state"] for d in status["devices"]} == {"cancelled"}

        # A command reaches the device through the broker; its reply shows
        # beside it (the reply's reason is the device's words: as text).
        br, dev = rig.broker, rig.devices[0]
        got = queue.Queue()
        client = rig.responders[dev.id].client
        client.message_callback_add(dev.topic("cmd"), lambda cl, ud, msg: got.put(msg.payload))
        client.subscribe(dev.topic("cmd"), qos=1)
        time.sleep(0.5)  # the SUBACK
        old = fleetops.configure(fleetops.Ops(br.pki_dir, rig.fleet_key, br.host, br.port, br.prefix, br.state_dir))
        try:
            dev_page = "/devices/" + dev.id
            assert "Done" in con.post(ada, dev_page + "/command", {"op": "read"}, page_path=dev_page)
        finally:
            fleetops.configure(old).close()
        sent = con.db.one("SELECT counter FROM commands WHERE device_id = ?", (dev.id,))["counter"]
        cmd = console.open_encrypt0(*fleetkeys.derive(dev.z, dev.epoch, fleetkeys.DOWN, dev.id), got.get(timeout=10),
                                    dev.topic("cmd").encode())
        assert cmd[0] == sent and cbor2.loads(cmd[1])["op"] == "read"
        assert "no reply yet" in con.get(ada, dev_page)
        w = ingest.Ingest(rig.db_url, rig.fleet_key, br.ca_path)
        w.process_batch([dev.reply(sent, ok=False, reason=UPDATE_REASON)])
        w.db.close()
        row = con.get(ada, dev_page).split('id="device-commands"')[1].split("</table>")[0]
        assert "refused: " + escaped(UPDATE_REASON) in row and "no reply yet" not in row
