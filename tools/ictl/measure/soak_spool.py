"""Fault campaigns for the telemetry payload path. Power cuts on simulated
devices (tools/ictl/sim/faults.py: cut before, and tear, every flash operation):

* nonce: a device hands out nonce counter values (NVS, reserved in blocks, a
  fresh epoch every boot);
  after every cut the next boot must start above every value used before.
* spool: a device queues readings in the store-and-forward spool on its
  littlefs and delivers some to a "broker" (a host file, outside the cut);
  after every cut the next boot delivers the rest: every reading whose put()
  returned arrives, in order, at most one of them twice (QoS 1 is at least
  once).

And against the real broker:

* broker: a device queues readings through the spool while mosquitto is
  restarted and the device reset; the fleet console must receive every
  reading whose put() returned, in order.

`make test` runs a slice of each (tests/host/test_spool.py,
tests/host/test_telemetry_cuts.py); `ictl soak --only spool` runs them whole."""
import os
import shutil
import tempfile
import time

from ictl.sim import faults

MOUNT = """
import vfs, esp32
_b = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
try:
    _fs = vfs.VfsLfs2(_b)
except OSError:
    vfs.VfsLfs2.mkfs(_b)
    _fs = vfs.VfsLfs2(_b)
vfs.mount(_fs, "/flash")
"""

NONCE_SETUP = """
from ironclad import nonce
nonce.Counter(block=BLOCK)
"""

NONCE_CODE = """
from ironclad import nonce
c = nonce.Counter(block=BLOCK)
with open(LOG, "w") as f:
    f.write("%s\\n" % c.epoch.hex())
for i in range(VALUES):
    v = c.next()
    # Logged on the host (outside the cut) once handed out: "used".
    with open(LOG, "a") as f:
        f.write("%d\\n" % v)
"""

NONCE_CHECK = """
from ironclad import nonce
c = nonce.Counter(block=BLOCK)
lines = open(LOG).read().split()
used = [int(x) for x in lines[1:]]
if lines[0] == c.epoch.hex():
    raise SystemExit("the epoch did not change across a boot")  # a new one every boot (issue 14)
if len(set(used)) != len(used):
    raise SystemExit("a value was handed out twice in one boot")
v = c.next()
if used and v <= max(used):
    raise SystemExit("reused: next %d after %d was used" % (v, max(used)))
print("OK", len(used), v)
"""


def nonce_sweep(values=24, block=4, tear_bytes=(5,), points=None):
    """(cut points, failures) for a counter handing out `values` values."""
    tmp = tempfile.mkdtemp(prefix="ictl-nonce-")
    try:
        sub = {"BLOCK": str(block), "VALUES": str(values), "LOG": repr(os.path.join(tmp, "used.log"))}
        return faults.sweep(_fill(NONCE_SETUP, sub), _fill(NONCE_CODE, sub), _fill(NONCE_CHECK, sub),
                            tear_bytes=tear_bytes, points=points, workdir=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SPOOL_COMMON = MOUNT + """
from ironclad import spool, events
events.PATH = "/flash/events.bin"
events.SENT_PATH = "/flash/events.sent"
def sp():
    return spool.Spool("/flash/sp", max_bytes=16384, seg_bytes=256)
def msg(i):
    return b"r%05d" % i + bytes(34)
def pub(m):
    # The broker: a host file, beyond the power cut.
    with open(DELIVERED, "a") as f:
        f.write("%d\\n" % int(bytes(m[1:6])))
"""

SPOOL_SETUP = SPOOL_COMMON + """
s = sp()
for i in range(3):
    s.put(msg(90000 + i))
"""

SPOOL_CODE = SPOOL_COMMON + """
open(DELIVERED, "w").close()
open(ACKED, "w").close()
s = sp()
for i in range(PUTS):
    s.put(msg(i))
    with open(ACKED, "a") as f:
        f.write("%d\\n" % i)
    if i % 3 == 2:
        s.flush(pub, 2)
s.flush(pub)
"""

SPOOL_CHECK = SPOOL_COMMON + """
s = sp()
s.flush(pub)
if len(s):
    raise SystemExit("still queued after a full flush: %d" % len(s))
acked = [90000, 90001, 90002] + [int(x) for x in open(ACKED).read().split()]
got = [int(x) for x in open(DELIVERED).read().split()]
order = [90000, 90001, 90002] + list(range(PUTS))
dups = 0
seen = []
for x in got:
    if seen and x == seen[-1]:
        dups += 1
        continue
    seen.append(x)
if dups > 1:
    raise SystemExit("%d duplicates from one cut" % dups)
# In put order, nothing skipped: the acked ones, and at most the one put
# that landed on flash just before the cut.
if seen != order[:len(seen)] or len(seen) < len(acked) or len(seen) > len(acked) + 1:
    raise SystemExit("delivered %r, acked %r" % (seen, acked))
print("OK", len(seen), dups)
"""


def spool_sweep(puts=12, tear_bytes=(5,), points=None):
    """(cut points, failures) for a device queueing `puts` readings and
    delivering them as it goes."""
    tmp = tempfile.mkdtemp(prefix="ictl-spool-")
    try:
        sub = {"PUTS": str(puts), "DELIVERED": repr(os.path.join(tmp, "delivered.log")),
               "ACKED": repr(os.path.join(tmp, "acked.log"))}
        return faults.sweep(_fill(SPOOL_SETUP, sub), _fill(SPOOL_CODE, sub), _fill(SPOOL_CHECK, sub),
                            tear_bytes=tear_bytes, points=points, workdir=tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def broker_campaign(tmp, restarts=2, reboots=1, readings=16):
    """A device queues readings through the spool while the broker is
    restarted `restarts` times and the device itself is killed (SIGKILL, a
    reset) `reboots` times; the console must receive every reading whose
    put() returned, in order. Returns (restarts, reboots, readings put,
    lost: list of seqs, out of order: list of (seq, after))."""
    from ictl.sim.telemetry_rig import Rig

    with Rig(tmp) as rig:
        con = rig.console().start()
        cfg = dict(readings=readings, interval_ms=150)
        peer = rig.peer(**cfg)
        puts = []
        events = ["restart"] * restarts + ["reboot"] * reboots
        step = max(1, readings // (len(events) + 2))
        for i, ev in enumerate(events):
            peer.wait_for("PUT", (i + 1) * step - len(puts), timeout=60)
            if ev == "restart":
                rig.broker.stop()
                n = peer.count("PUT")
                peer.wait_for("PUT", n + 2, timeout=60)  # spooled while the broker is away
                rig.broker.restart()
            else:
                peer.kill()
                puts += peer.puts()
                peer = rig.peer(**cfg)
        peer.wait_for("DONE", timeout=120)
        puts += peer.puts()
        want = set(puts)
        got = []
        end = time.monotonic() + 30
        while not want <= set(got) and time.monotonic() < end:
            m = con.get(timeout=0.5)
            if m is not None and m.kind == "telemetry" and m.body:
                got.append(m.body["seq"])
        lost = sorted(want - set(got))
        disorder = [(b, a) for a, b in zip(got, got[1:]) if b < a]
        return restarts, reboots, len(puts), lost, disorder


def _fill(code, sub):
    for k, v in sub.items():
        code = code.replace(k, v)
    return code


def add_args(p):
    p.add_argument("--spool-puts", type=int, default=12, help="readings queued in the spool power-cut sweep (default 12)")
    p.add_argument("--spool-nonces", type=int, default=40, help="nonce values handed out in the nonce power-cut sweep (default 40)")
    p.add_argument("--spool-restarts", type=int, default=5, help="broker restarts while a device spools readings (default 5)")
    p.add_argument("--spool-reboots", type=int, default=3, help="device resets in the same campaign (default 3)")


def run(fig, args):
    points, failures = spool_sweep(args.spool_puts, tear_bytes=(1, 5, 17))
    fig.add("spool_cut_points", points, "cuts",
            "store-and-forward spool on littlefs: power cut before, and tear at 1/5/17 bytes of, every flash "
            "operation while %d readings are queued and delivered; flash encryption on" % args.spool_puts)
    fig.add("spool_cut_failures", len(failures), "count",
            "cuts after which a reading whose put() returned was lost, reordered or sent twice more than once (must be 0)")
    npoints, nfail = nonce_sweep(args.spool_nonces, tear_bytes=(1, 5, 17))
    fig.add("nonce_cut_points", npoints, "cuts",
            "nonce counter in NVS (blocks of 4): power cut before, and tear of, every flash operation while "
            "%d values are handed out" % args.spool_nonces)
    fig.add("nonce_reuse", len(nfail), "count", "cuts after which the next boot could hand out a used nonce (must be 0)")
    for f in failures + nfail:
        print("  failure %s: %s" % f)
    tmp = tempfile.mkdtemp(prefix="ictl-spool-broker-")
    try:
        restarts, reboots, n, lost, disorder = broker_campaign(tmp, args.spool_restarts, args.spool_reboots,
                                                               readings=8 * (args.spool_restarts + args.spool_reboots + 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fig.add("spool_broker_restarts", restarts, "count",
            "mosquitto restarts (and %d device resets) while a device queued %d readings through the spool" % (reboots, n))
    fig.add("spool_readings_lost", len(lost), "count",
            "readings whose put() returned that never reached the fleet console (must be 0)%s"
            % ("; out of order: %r" % disorder if disorder else ""))
    return len(failures) + len(nfail) + len(lost) + len(disorder)
