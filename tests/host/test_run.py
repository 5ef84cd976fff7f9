"""`ictl run` (what `make run` does), first version: broker, virtual board,
mutual TLS from the unix port, readings shown by the console; nothing left running."""
import os
import subprocess
import sys

from mphelp import ROOT


def _mosquittos():
    out = subprocess.run(["pgrep", "-f", "mosquitto -c"], capture_output=True, text=True).stdout
    return set(out.split())


def test_run_publishes_readings_over_mutual_tls(tmp_path):
    before = _mosquittos()
    r = subprocess.run([sys.executable, "-m", "ictl", "run", "--dir", str(tmp_path / "run"), "--readings", "2", "--timeout", "30"],
                       capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if "/telemetry" in l]
    assert len(lines) == 2 and '"seq": 1' in lines[0] and '"seq": 2' in lines[1]
    log = (tmp_path / "run" / "device" / "console.log").read_text(errors="replace")
    assert "over mutual TLS" in log
    assert _mosquittos() <= before  # the broker it started is gone
    # no device process is left either (they carry ESPSIM_DIR=<tmp_path>/...)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open("/proc/%s/environ" % pid, "rb").read()
        except OSError:
            continue
        if ("ESPSIM_DIR=" + str(tmp_path)).encode() in env:
            left.append(pid)
    assert not left
