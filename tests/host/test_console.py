"""The fleet console against a device over the real mosquitto (mutual TLS,
ACL): the device (unix port, tests/device/telemetry_peer.py) publishes its
hello, sealed readings and security events; the console opens them, checks
the chain, and sends authenticated commands the device accepts, or rejects
(forged, replayed) with an event the console then receives. Also the
`ictl console` command line as a person uses it."""
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mphelp  # noqa: E402
from ictl import broker as fleet_broker  # noqa: E402
from ictl.console import seal_encrypt0  # noqa: E402
from ictl.sim.telemetry_rig import Rig  # noqa: E402

pytestmark = pytest.mark.skipif(not any(os.access(p, os.X_OK) for p in fleet_broker.MOSQUITTO_CANDIDATES)
                                and not __import__("shutil").which("mosquitto"), reason="mosquitto not installed")


def collect(con, until, timeout=30, got=None):
    """Console messages (appended to got) until until(got) is true."""
    got = [] if got is None else got
    end = time.monotonic() + timeout
    while not until(got):
        if time.monotonic() > end:
            raise AssertionError("console saw only:\n" + "\n".join(str(m) for m in got))
        m = con.get(timeout=0.5)
        if m is not None:
            got.append(m)
    return got


def kinds(msgs, kind):
    return [m for m in msgs if m.kind == kind]


def test_console_and_device_end_to_end(tmp_path):
    with Rig(tmp_path) as rig:
        con = rig.console().start()
        peer = rig.peer(readings=4, interval_ms=300, linger_ms=60000, boot_events=2)
        got = collect(con, lambda g: len(kinds(g, "telemetry")) >= 4 and len(kinds(g, "events")) >= 2)
        assert not [m for m in got if m.alarm], [str(m) for m in got]
        tel = kinds(got, "telemetry")
        assert [m.body["seq"] for m in tel] == [0, 1, 2, 3]
        # Data minimisation end to end: the peer passes ssid and mac fields.
        assert all(set(m.body) == {"id", "ts", "seq", "temp_c", "uptime_ms"} for m in tel)
        ev = kinds(got, "events")
        assert [m.body["reason"] for m in ev[:2]] == ["test_0", "test_1"]

        # An authenticated command: accepted, acted on, answered.
        ctr = con.send_command(rig.device_id, "interval", s=1)
        peer.wait_for("CMD interval")
        collect(con, lambda g: kinds(g, "reply"), got=got)
        assert kinds(got, "reply")[0].body == {"id": rig.device_id, "cmd": ctr, "ok": True, "reason": ""}

        # Forged (someone on the broker without the key) and replayed: refused
        # by the device, each a security event the console receives.
        topic = con.topic(rig.device_id, "cmd")
        forged = seal_encrypt0(os.urandom(16), os.urandom(13), ctr + 10, b"\xa2bopfrebootciat\x00", topic.encode())
        con._client.publish(topic, forged, qos=1).wait_for_publish(5)
        peer.wait_for("REJECT forged")
        _, replay, _ = con.command(rig.device_id, "read")
        con._client.publish(topic, replay, qos=1).wait_for_publish(5)
        peer.wait_for("CMD read")
        con._client.publish(topic, replay, qos=1).wait_for_publish(5)
        peer.wait_for("REJECT replayed")
        collect(con, lambda g: len([m for m in kinds(g, "events") if m.body["kind"] == "cmd"]) >= 4
                and len(kinds(g, "reply")) >= 4, got=got)
        cmd_ev = [(m.body["reason"], m.body["outcome"]) for m in kinds(got, "events") if m.body["kind"] == "cmd"]
        assert cmd_ev == [("interval", "ok"), ("forged", "rejected"), ("read", "ok"), ("replayed", "rejected")], cmd_ev
        assert not [m for m in got if m.alarm], [str(m) for m in got]
        refused = [m.body["reason"] for m in kinds(got, "reply") if not m.body["ok"]]
        assert refused == ["forged", "replayed"]


def test_console_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(mphelp.ROOT, "tools"))
    ictl = [sys.executable, "-m", "ictl", "console"]
    with Rig(tmp_path) as rig:
        bdir = rig.broker.state_dir
        w = subprocess.Popen(ictl + ["watch", "--broker", bdir, "--count", "5", "--timeout", "30"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Subscribed before the device speaks (readings are not retained).
        assert "watching" in w.stdout.readline()
        peer = rig.peer(readings=3, interval_ms=200, linger_ms=60000)
        out, err = w.communicate(timeout=60)
        lines = out.splitlines()
        assert w.returncode == 0, out + err
        assert any("telemetry" in l and "seq=0" in l and "temp_c=21.5" in l for l in lines), lines
        assert any("state" in l and "certificate ok" in l for l in lines), lines
        s = subprocess.run(ictl + ["send", "--broker", bdir, rig.device_id, "interval", "s=7"],
                           env=env, capture_output=True, text=True, timeout=60)
        assert s.returncode == 0 and "sent interval" in s.stdout, s.stdout + s.stderr
        peer.wait_for("CMD interval")
        bad = subprocess.run(ictl + ["send", "--broker", bdir, rig.device_id, "interval", "s=x"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "integer" in bad.stderr
        key = subprocess.run(ictl + ["fleet-key", "--dir", rig.broker.pki_dir], env=env, capture_output=True,
                             text=True, timeout=60)
        assert key.stdout.strip().startswith("04") and len(key.stdout.strip()) == 130
        assert oct(os.stat(os.path.join(rig.broker.pki_dir, "fleet-data.key")).st_mode & 0o777) == "0o600"
