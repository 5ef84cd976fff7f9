"""The agent's heap in its steady telemetry loop, measured on the whole
product as `make run` runs it (provisioned board, mutual TLS, sealed
readings, after the delta update to v2)."""
import os
import re
import subprocess
import sys

from ictl import ROOT, ToolError
from ictl.board import APP_HEAP_KIB

_HEAP = re.compile(r"agent: heap (\d+) bytes in use above the (\d+) bytes of loaded code")


def run(fig, tmp, args):
    d = os.path.join(tmp, "agent-run")
    r = subprocess.run([sys.executable, "-m", "ictl", "run", "--dir", d, "--readings", "12", "--timeout", "90"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    if r.returncode:
        raise ToolError("ictl run failed: %s" % (r.stderr.strip().splitlines() or ["?"])[-1])
    with open(os.path.join(d, "device", "console.log"), "rb") as f:
        found = _HEAP.findall(f.read().decode(errors="replace"))
    if len(found) < 2:
        raise ToolError("the agent reported its heap %d times, expected at least 2" % len(found))
    data, code = (int(x) for x in found[-1])
    fig.add("agent_steady_heap_kib", round(data / 1024, 1), "KiB",
            "GC heap the agent's data holds at its 10th reading after gc.collect(), above the loaded code "
            "(TLS session, MQTT buffers, sealer, verifier, spool, updater); all readings: %s"
            % ", ".join("%.1f" % (int(a) / 1024) for a, _ in found))
    fig.add("agent_code_heap_kib", round(code / 1024, 1), "KiB",
            "precompiled code the unix port holds in the GC heap (an ESP32 keeps it in flash); "
            "the board holds it apart and the agent runs in the %d KiB left for it" % APP_HEAP_KIB)
