"""The agent's heap in its steady telemetry loop, measured on the whole
product as `make run` runs it (provisioned board, mutual TLS, sealed
readings, after the delta update to v2)."""
import os
import re
import subprocess
import sys

from ictl import ROOT, ToolError
from ictl.sim.board import APP_HEAP_KIB

_HEAP = re.compile(r"agent: heap (\d+) bytes in use by the agent, (\d+) free")


def run(fig, tmp, args):
    d = os.path.join(tmp, "agent-run")
    r = subprocess.run([sys.executable, "-m", "ictl", "run", "--dir", d, "--readings", "12", "--timeout", "90"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    if r.returncode:
        raise ToolError("ictl run failed: %s" % (r.stderr.strip().splitlines() or ["?"])[-1])
    with open(os.path.join(d, "device", "console.log"), "rb") as f:
        log = f.read().decode(errors="replace")
    found = _HEAP.findall(log)
    if len(found) < 2:
        raise ToolError("the agent reported its heap %d times, expected at least 2" % len(found))
    budget = re.findall(r"device: (\d+) KiB heap for the app; its (\d+) KiB of loaded code", log)
    if not budget:
        raise ToolError("the board did not report the app's heap")
    fig.add("agent_app_heap_kib", int(budget[-1][0]), "KiB",
            "the heap the whole run gave the agent (code held apart, as an ESP32 keeps it in flash): TLS, "
            "telemetry, commands, the delta update to v2 and the tampered update all completed in it")
    data = int(found[-1][0])
    fig.add("agent_steady_heap_kib", round(data / 1024, 1), "KiB",
            "GC heap the agent's data holds at its 10th reading after gc.collect(), above the loaded code "
            "(TLS session, MQTT buffers, sealer, verifier, spool, updater); all readings: %s"
            % ", ".join("%.1f" % (int(a) / 1024) for a, _ in found))
    fig.add("agent_code_heap_kib", int(budget[-1][1]), "KiB",
            "precompiled code (library, stand-ins, app) the unix port holds in its GC heap; an ESP32 keeps it "
            "in flash, and the board holds it apart from the agent's %d KiB" % APP_HEAP_KIB)
