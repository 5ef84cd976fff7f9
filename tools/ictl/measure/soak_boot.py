"""Verified-boot campaigns: tampered images (every header and signature byte
and spread payload positions, each with one bit flipped, through the device's
own streaming verifier); power cuts and torn writes at every flash
operation of an install (slot write + switch), of a confirmation and of a
trial's expiry, each followed by a boot that must run a verified image; and
exceptions injected at every step of the boot path (bootlab.FAULT_BOOT), on
both slots, with and without a trial, which must never make the board loop."""
import os
import shutil
import tempfile

from ictl.sim import bootlab, faults
from ictl.sim import factory
from ictl import image

TAMPER = """
import sys
from ironclad import image
data = bytearray(open(%(path)r, "rb").read())
SLOT = %(slot)d


class RamSlot:
    # An app slot backed by RAM, so each mutant costs a flip, not a flash erase.
    def info(self):
        return (1, 0x40, 0, SLOT, "ram", False)

    def readblocks(self, block, buf, off=0):
        a = block * 4096 + off
        if a < 0 or a + len(buf) > SLOT:
            raise OSError(-260)
        n = max(0, min(len(buf), len(data) - a))
        buf[:n] = memoryview(data)[a:a + n]
        for i in range(n, len(buf)):
            buf[i] = 0xFF


part = RamSlot()
image.verify(part, floor=0, event=None)  # the unmodified image must pass
HDR, N, TOTAL = 128, %(length)d, len(data)
count = 0
accepted = []
# Every header byte, every signature byte (by sig_step), payload positions
# spread evenly (at most %(payload)d); one bit of each flipped in turn.
for start, stop, step, limit in ((0, HDR, %(hstep)d, HDR), (HDR + N, TOTAL, %(sstep)d, TOTAL),
                                 (HDR, HDR + N, max(1, N // max(1, %(payload)d)), %(payload)d)):
    for p in range(start, stop, step)[:limit]:
        data[p] ^= 1 << (p %% 8)
        try:
            image.verify(part, floor=0, event=None)
            accepted.append(p)
        except image.Rejected:
            pass
        data[p] ^= 1 << (p %% 8)
        count += 1
print("TAMPER", count, len(accepted), accepted[:10])
"""


def _lab(workdir):
    key = image.keygen(os.path.join(workdir, "k1.pem"))
    dev = os.path.join(workdir, "base")
    bootlab.new_device(dev, [("k1", key)])
    return key, dev


def tamper_campaign(workdir, payload_positions=1000, header_step=1, sig_step=1):
    """Returns (mutants, accepted positions)."""
    key, dev = _lab(workdir)
    src = bootlab.make_app(os.path.join(workdir, "app"), "1.0.0", pad=max(payload_positions, 1) * 6)
    data = image.build(src, key, "k1", "1.0.0", 1)
    path = os.path.join(workdir, "tamper.img")
    with open(path, "wb") as f:
        f.write(data)
    n = image.parse_header(data)["length"]
    r = bootlab.run(dev, TAMPER % {"path": path, "slot": len(data) + 4096, "length": n, "hstep": header_step,
                                   "sstep": sig_step, "payload": payload_positions}, timeout=600)
    line = [l for l in r.stdout.splitlines() if l.startswith("TAMPER ")]
    if r.returncode or not line:
        raise RuntimeError("tamper campaign failed: %s" % (r.stdout + r.stderr)[-800:])
    _, count, acc, _ = line[0].split(" ", 3)
    return int(count), int(acc)


# Snippets for faults.sweep: they run under `micropython -c` on the sweep's
# device, so they put the precompiled firmware and the board first on the
# path themselves and boot through start.py as a board boots.
PATHS = """
import os, sys
os.putenv("ESPSIM_FIRMWARE", %(fw)r)
sys.path[:0] = [%(fw)r + "/lib/ironclad", %(fw)r + "/firmware/unix", %(board)r]
"""

# Outside a boot no littlefs is mounted: the install's events go to a host file.
INSTALL = """
from ironclad import slots, events
events.PATH = %r
slots.install_file(%r, %r)
"""

BOOT = """
g = {"__name__": "__main__"}
exec(open(%(start)r).read(), g)
"""

# After a cut: a valid record copy must survive and the floor (1, from the
# setup's confirmed v1) must not drop; then a boot must run an allowed image.
CHECK = """
from ironclad import bootstate
s0 = bootstate.read()
for m in list(sys.modules):
    if m.startswith("ironclad"):
        del sys.modules[m]  # the boot imports them again from the firmware
""" + BOOT + """
st = sys.modules["ironclad.bootstate"]
b = st.booted()
ok = s0.copy >= 0 and s0.floor >= 1 and b and b["version"] in %(allowed)r
print("OK" if ok else "FAIL", s0.copy, s0.floor, b and b["version"], st.state())
"""

EXPIRE = """
from ironclad import bootstate
st = bootstate.read()
st.attempts = 0
bootstate.write(st)
"""


def cut_campaign(workdir, tear_bytes=(1, 5, 17)):
    """Every flash operation of three scenarios cut and torn. Returns
    (cut points, failures: list of (scenario, fault, output))."""
    key, _ = _lab(workdir)
    imgs = {}
    for name, ver, ctr, confirm in (("v1", "1.0.0", 1, True), ("v2", "2.0.0", 2, False), ("v2c", "2.0.0", 2, True)):
        # Padded so a slot write spans two sectors and several write calls.
        src = bootlab.make_app(os.path.join(workdir, "app-" + name), ver, confirm, pad=5000)
        imgs[name] = os.path.join(workdir, name + ".img")
        with open(imgs[name], "wb") as f:
            f.write(image.build(src, key, "k1", ver, ctr))
    v1, v2 = image.parse_version("1.0.0"), image.parse_version("2.0.0")
    total, failures = 0, []
    scenarios = (
        # name, images the setup installs after v1, setup code after that,
        # the swept code (images to install, or a boot), versions allowed after.
        # A slot switch: write v2 into app_b and make it boot on trial.
        ("install", [], "", [("v2", "app_b")], (v1, v2)),
        # A confirmation: the trial image boots and confirms itself.
        ("confirm", [("v2c", "app_b")], "", None, (v1, v2)),
        # A trial that ran out of attempts: the boot switches back to app_a.
        ("expire", [("v2", "app_b")], EXPIRE, None, (v1,)),
    )
    for name, setup, after, swept, allowed in scenarios:
        wd = os.path.join(workdir, name)
        base = os.path.join(wd, "base")
        os.makedirs(wd)
        # sweep() recreates the device in base/ but keeps its board/ (trust module).
        shutil.copytree(os.path.join(workdir, "base", "board"), os.path.join(base, "board"))
        v = {"fw": bootlab.firmware(), "board": os.path.join(base, "board"), "dev": base,
             "start": bootlab.start(), "allowed": allowed}
        pre = PATHS % v
        ev = os.path.join(wd, "events.bin")
        # The setup installs v1 and boots it in a child process (formats
        # littlefs; v1 confirms itself: floor 1), then installs the rest.
        child = "ESPSIM_FIRMWARE=%s MICROPYPATH=%s/lib/ironclad:%s/firmware/unix %s -X heapsize=112K %s >/dev/null" % (
            v["fw"], v["fw"], v["fw"], faults.MICROPYTHON, bootlab.start())
        setup_code = pre + INSTALL % (ev, imgs["v1"], "app_a") + "os.system(%r)\n" % child + \
            "".join(INSTALL % (ev, imgs[i], slot) for i, slot in setup) + after
        code = pre + ("".join(INSTALL % (ev, imgs[i], slot) for i, slot in swept) if swept else BOOT % v)
        # 128 KiB as bootlab.fault_boot: the check imports the boot modules
        # twice beside the flash-encryption stand-in, in one heap.
        n, fails = faults.sweep(setup_code, code, pre + CHECK % v, tear_bytes=tear_bytes, workdir=wd, heap_kib=128)
        total += n
        failures += [(name, f, out) for f, out in fails]
    return total, failures


# Boot configurations of the fault campaign: (name, active slot, trial,
# images {slot: version}). Every image verifies (v1 and v2 share counter 1),
# so one of them must run whenever the faults let it.
CONFIGS = (
    ("app_a", "app_a", False, {"app_a": "1.0.0", "app_b": "2.0.0"}),
    ("app_b", "app_b", False, {"app_a": "1.0.0", "app_b": "2.0.0"}),
    ("app_a-trial", "app_a", True, {"app_a": "2.0.0", "app_b": "1.0.0"}),
    ("app_b-trial", "app_b", True, {"app_a": "1.0.0", "app_b": "2.0.0"}),
    ("app_a-alone", "app_a", False, {"app_a": "1.0.0"}),
    ("app_b-alone", "app_b", False, {"app_b": "1.0.0"}),
)
TRANSIENT_BOOTS = 3  # the faulty boot, then two clean ones
PERSISTENT_BOOTS = 4  # with the fault at every boot (more than the trial's attempts)


def _check_run(boots, allowed, attempts, fault_left):
    """Why a run of boots counts as a loop, or None. boots: Boot list, the
    fault present in the first `fault_left` of them."""
    for n, b in enumerate(boots):
        if not b.ok(allowed):
            return "boot %d: %r" % (n + 1, b)
    trial_runs = sum(1 for b in boots if b.trial)
    if trial_runs > attempts:
        return "a trial image ran %d times with %d attempts" % (trial_runs, attempts)
    clean = boots[fault_left:]
    if clean and clean[0].ran is None:
        return "no app after the fault went: %r" % clean[0]
    return None


def fault_campaign(workdir, configs=CONFIGS, kinds=bootlab.KINDS, rotate=False, resets=True):
    """Every step call of the boot path of each configuration (from a clean
    boot's trace), with each kind of exception, once (transient: then clean
    boots) and at every boot (persistent: the same step for the same slot);
    with a trial, also a reset at every step of the trial image, every boot.
    rotate: one kind per step call, in turn (the reduced slice of make test);
    resets: the reset cases too.
    Returns (fault points, loops: [(case, why)], boots run)."""
    key, _ = _lab(workdir)
    imgs = {}
    for ver in ("1.0.0", "2.0.0"):
        src = bootlab.make_app(os.path.join(workdir, "app-" + ver), ver)
        imgs[ver] = image.build(src, key, "k1", ver, 1)
    points, loops, nboots = 0, [], 0
    for name, active, trial, slots_ in configs:
        dev = os.path.join(workdir, name)
        bootlab.new_device(dev, [("k1", key)])
        for slot, ver in slots_.items():
            factory.flash_image(dev, imgs[ver], slot, active=False)
        other = "app_b" if active == "app_a" else "app_a"
        bootlab.set_bootstate(dev, active, trial, 3 if trial else 0, other if trial else None, floor=1)
        a, b = bootlab.slot_range(dev, factory.BOOTSTATE_PART)
        state = bootlab.read_flash(dev, a, b)
        allowed = set(slots_.values())
        first = bootlab.fault_boot(dev)
        nboots += 1
        if not first.ok(allowed) or first.trace is None:
            loops.append(((name, "clean"), "the clean boot failed: %r %s" % (first, first.result.stderr[-300:])))
            continue
        trace = first.trace
        cases = []
        for i, (step, slot) in enumerate(trace):
            for k in ([kinds[i % len(kinds)]] if rotate else kinds):
                cases.append(("once", [(step, i, slot, k)], TRANSIENT_BOOTS, 1))
        seen = []
        for step, slot in trace:
            if [step, slot] not in seen:
                seen.append([step, slot])
        for j, (step, slot) in enumerate(seen):
            for k in ([kinds[j % len(kinds)]] if rotate else kinds):
                cases.append(("always", [(step, -1, slot, k)], PERSISTENT_BOOTS + 1, PERSISTENT_BOOTS))
        if trial and resets:
            # The chip resets (a panic, the watchdog) at a step of the trial
            # image, at every boot: each boot spent an attempt first, so the
            # trial ends and the other image runs.
            for step, slot in seen:
                if slot == active:
                    cases.append(("reset", [(step, -1, slot, "reset")], PERSISTENT_BOOTS + 1, PERSISTENT_BOOTS + 1))
        for mode, faults, n, faulty in cases:
            bootlab.write_flash(dev, a, state)  # the configuration's boot state again
            boots = [bootlab.fault_boot(dev, faults if j < faulty else ()) for j in range(n)]
            nboots += n
            points += 1
            if mode == "reset":
                why = None if [b.ran for b in boots[-2:]] == [slots_[other]] * 2 else \
                    "the trial never ended: %r" % boots
            else:
                why = _check_run(boots, allowed, 3 if trial else 0, faulty)
            if why:
                loops.append(((name, mode) + tuple(faults[0]), why))
    return points, loops, nboots


def add_args(p):
    p.add_argument("--boot-payload-positions", type=int, default=2000,
                   help="payload positions flipped in the tamper campaign (default 2000)")


def run(fig, args):
    tmp = tempfile.mkdtemp(prefix="ictl-soak-boot-")
    try:
        mutants, accepted = tamper_campaign(os.path.join(tmp, "tamper"), args.boot_payload_positions)
        fig.add("tamper_mutants", mutants, "images",
                "one bit flipped in every header byte (128), every signature byte (384) and %d payload positions, "
                "each verified by the device's streaming verifier" % args.boot_payload_positions)
        fig.add("tamper_accepted", accepted, "images", "tampered images the verifier accepted (must be 0)")
        points, failures = cut_campaign(os.path.join(tmp, "cuts"))
        fig.add("bootstate_cut_points", points, "cuts",
                "power cut before, and tear at 1/5/17 bytes of, every flash operation of an install (slot write and "
                "switch), a confirmation and a trial expiry; a boot follows each; flash encryption on")
        fig.add("bootstate_cut_failures", len(failures), "count",
                "cuts after which no valid boot state copy was left, the floor dropped, or the next boot did "
                "not run a verified, allowed image (must be 0)")
        for f in failures[:3]:
            print("  cut failure:", f)
        points, loops, boots = fault_campaign(os.path.join(tmp, "faults"))
        fig.add("boot_fault_points", points, "cases",
                "an exception (%s) injected at every step call of the boot path (%d steps: %s), once and at every "
                "boot, in %d configurations (active app_a or app_b, on trial or not, the other slot verified or "
                "empty), and a reset at every step of a trial image at every boot; %d boots through the firmware "
                "start-up"
                % (", ".join(bootlab.KINDS), len(bootlab.STEPS), ", ".join(bootlab.STEPS), len(CONFIGS), boots))
        fig.add("boot_loops", len(loops), "count",
                "cases where a boot let an exception out of boot.py (a reset on a locked board), ended neither "
                "in a verified app nor in recovery mode with an event, ran a trial image more often than its "
                "attempts, or ran no app once the fault was gone, or whose trial never ended (must be 0)")
        for f in loops[:3]:
            print("  boot loop:", f)
        return accepted + len(failures) + len(loops)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
