"""`ictl run` stops cleanly on Ctrl-C, and runs in parts: the device alone
(`--part device`), with the console attached from another process (`--part
console`)."""
import os
import signal
import subprocess
import sys
import time

from mphelp import ROOT

ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "ictl", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)


def _wait_for(p, needle, timeout=300):
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    p.kill()
    raise AssertionError("no %r in:\n%s" % (needle, "".join(seen)))


def _left_behind(root):
    """Processes (broker, devices) that belong to this run directory."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open("/proc/%s/environ" % pid, "rb").read()
            cmd = open("/proc/%s/cmdline" % pid, "rb").read()
        except OSError:
            continue
        if ("ESPSIM_DIR=" + str(root)).encode() in env or (b"mosquitto" in cmd and str(root).encode() in cmd):
            left.append((pid, cmd))
    return left


def _interrupt(p):
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    return out


def test_ctrl_c_stops_everything(tmp_path):
    root = tmp_path / "run"
    p = _start("--dir", str(root), "--timeout", "60")
    _wait_for(p, "streaming")
    _wait_for(p, " telemetry ")
    assert _left_behind(root)  # the broker and the device are running
    _interrupt(p)
    assert p.returncode == 130
    time.sleep(0.5)
    assert not _left_behind(root)


def test_device_part_and_console_part(tmp_path):
    root = tmp_path / "run"
    dev = _start("--dir", str(root), "--part", "device", "--timeout", "60")
    _wait_for(dev, "device running")
    con = _start("--dir", str(root), "--part", "console")
    try:
        out = _wait_for(con, " telemetry ", timeout=60)
        assert "temp_c=" in out.splitlines()[-1]  # decrypted by the attached console
    finally:
        _interrupt(con)
        _interrupt(dev)
    assert dev.returncode == 130 and con.returncode == 130
    time.sleep(0.5)
    assert not _left_behind(root)


def test_console_part_without_a_device_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ictl", "run", "--dir", str(tmp_path), "--part", "console"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "no running `ictl run --part device`" in r.stderr


def test_remote_decommission(tmp_path):
    """A locked board has no REPL: the fleet wipes it with an authenticated
    command; the board erases its credentials and comes back unprovisioned,
    starting no network service."""
    import json

    from ictl import console as fleet_console, fleetkeys, pki

    root = tmp_path / "run"
    dev = _start("--dir", str(root), "--part", "device", "--timeout", "60")
    try:
        _wait_for(dev, "device running")
        st = json.loads((root / "run.json").read_text())
        host, port, prefix, pki_dir, ca_path = st["broker"]
        kp, cp = pki.ensure_console_cert(pki.load_ca(pki_dir))
        con = fleet_console.Console(host, port, ca_path, cp, kp, fleetkeys.load(fleetkeys.path_in(st["keys"])), prefix)
        con.start()
        try:
            con.wait_device(st["device"], timeout=30)
            con.send_command(st["device"], "wipe", confirm=0x57495045)
        finally:
            con.stop()
        log = root / "device" / "console.log"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            text = log.read_text(errors="replace")
            if "event provisioning ok wiped" in text and "agent: not starting network services" in text.split("wiped", 1)[1]:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(log.read_text(errors="replace")[-3000:])
    finally:
        _interrupt(dev)
    assert not _left_behind(root)
