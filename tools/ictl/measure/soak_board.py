"""The board as upstream builds it (issue 13): the device code against the
port profile of every chip we ship, and NVS handles over a month of agent
life on the virtual board.

port_profile_violations: calls the device code makes into board modules that
MicroPython v1.28.0 lacks on the ESP32 or ESP32-S3 (firmware/profile/*.json).

nvs_handles_leaked: a fresh virtual board runs the agent's NVS-touching work
for `--board-days` simulated days (time passes with the `time` stand-in's
_advance, ticks_ms starting 10 s before its 2**30 wrap): clock.remember() at
every 10-second loop turn (NVS at most every 5 minutes), and every hour what a
reconnect or a settings change does again: the keystore, the nonce counter,
the command verifier's namespace and the agent's settings. Each esp32.NVS
call is an nvs_open that MicroPython never closes; the figure is the handles
opened beyond one per namespace (must be 0). The stand-in refuses handles
past its limit (ESP_ERR_NO_MEM), as the IDF heap would."""
import os
import tempfile

from ictl.sim import device as sim_device
from ictl.sim import faults
from ictl import portprofile

NVS_HANDLE_LIMIT = 512  # firmware/unix/esp32.py _MAX_HANDLES (ESPSIM_NVS_HANDLES)
# One simulated day per chunk: a process per chunk keeps each run short and
# the handle count is carried over (the boot does not end between chunks).
_RUN = """
import time, esp32
from ironclad import clock, nonce, commands, keystore
from ironclad import nvs as _nvs
time._advance(%(start)d)
days = %(days)d
steps = days * 8640
for i in range(steps):
    clock.remember()
    if i %% 360 == 0:
        keystore.KeyStore()
        nonce.Counter()
        _nvs.open(commands.NAMESPACE)
        _nvs.open("ic_agent")
    time._advance(10000)
print("HANDLES", esp32._nvs_handles(), len(_nvs._open), clock.stored())
"""


def add_args(p):
    p.add_argument("--board-days", type=int, default=30, help="simulated days of agent life for NVS handles (default 30)")


def profile_violations():
    out = []
    for chip in sorted(portprofile.BOARDS):
        out += ["%s: %s" % (chip, v) for v in portprofile.violations(portprofile.load(chip))]
    return out


def nvs_handles(days, timeout=1800):
    """(handles opened, namespaces, error or None) after `days` simulated days."""
    with tempfile.TemporaryDirectory() as tmp:
        dev = os.path.join(tmp, "dev")
        sim_device.create(dev, flash_encryption=True)  # a field board: production
        # ticks_ms 10 s before the wrap: the clock's 5-minute timer crosses it.
        start = (1 << 30) - 10000
        code = _RUN % {"start": start, "days": days}
        r = faults.run_device(code, dev, heap_kib=256, timeout=timeout)
        for line in r.stdout.splitlines():
            if line.startswith("HANDLES "):
                _, n, ns, _ = line.split()
                return int(n), int(ns), None
        err = (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
        return None, None, err


def run(fig, args):
    v = profile_violations()
    for line in v:
        print("  " + line)
    fig.add("port_profile_violations", len(v), "count",
            "calls from boot.py, main.py, app/, lib/ironclad/ into board modules that MicroPython v1.28.0 lacks "
            "on the ESP32 or ESP32-S3 (firmware/profile/*.json; must be 0)")
    days = args.board_days
    n, ns, err = nvs_handles(days)
    if err:
        # The stand-in refused a handle past its limit: at least that many leaked.
        print("  NVS handles: the run failed: %s" % err)
        leaked = NVS_HANDLE_LIMIT
    else:
        leaked = n - ns
    fig.add("nvs_handles_leaked", leaked, "handles",
            "esp32.NVS handles opened beyond one per namespace over %d simulated days of agent life on the virtual "
            "board (clock floor every 5 min, keystore/nonce/commands/settings every hour; ticks across the 2**30 "
            "wrap); MicroPython never closes one (must be 0)%s" % (days, "; " + err if err else ""))
    return len(v) + (1 if err or leaked else 0)
