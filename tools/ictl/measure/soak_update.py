"""Update power-cut campaigns: a device running v1 takes a delta or a full
update to v2 (download, apply, slot switch, reboot, trial boot) while power
is cut, or a flash write torn, at chosen flash operations. After each fault
the device boots again and the fleet goes on offering the update (as
ictl.update.Rollout does); every boot must run a verified image, no run may
fail with an exception, and in the end v2 runs and is confirmed.

* random: for each seed, five consecutive faults at random operations
  (cuts and tears mixed), then runs without faults to the end;
* sweep: one fault before every operation (and each write torn) of a run
  from the start, then runs without faults to the end."""
import os
import random
import shutil
import tempfile

from ictl import image as app_image
from ictl.sim import updatelab
from ictl.update import Update
from ictl.sim import factory

SIGKILL = -9


def _app(path, version, pad, seed):
    # A small app: main.py and a pseudo-random data file (so a full image is
    # several chunks and a delta is small but not empty).
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "main.py"), "w") as f:
        f.write("print('app %s')\n" % version)
    rng = random.Random(seed)
    with open(os.path.join(path, "data.bin"), "wb") as f:
        f.write(rng.randbytes(pad))
    return path


class Campaign:
    """One device image (v1 flashed) and two updates to v2 (delta, full)."""

    def __init__(self, work, pad=24 * 1024):
        self.work = work
        base = os.path.join(work, "lab")
        os.makedirs(base, exist_ok=True)
        self.fleet = updatelab.Fleet(base, "dev1")
        f = self.fleet
        v1_src = _app(os.path.join(base, "v1"), "1.0.0", pad, 1)
        v2_src = _app(os.path.join(base, "v2"), "1.1.0", pad, 1)
        with open(os.path.join(v2_src, "data.bin"), "r+b") as fh:  # v2 changes a few hundred bytes
            fh.seek(pad // 3)
            fh.write(random.Random(2).randbytes(300))
        self.v1 = app_image.build(v1_src, f.sign_key, f.key_id, "1.0.0", 1, f.hwid)
        self.v2 = app_image.build(v2_src, f.sign_key, f.key_id, "1.1.0", 2, f.hwid)
        self.v2_version = app_image.parse_version("1.1.0")
        factory.flash_image(f.devdir, self.v1, "app_a")
        self.updates = {}
        for kind, base_img in (("delta", self.v1), ("full", None)):
            u = Update.create(self.v2, base=base_img)
            meta = f.save(u, u.metadata(f.dev_id, f.dev_pub, f.sign_key, f.key_id), kind)
            self.updates[kind] = (u, meta)
        self.snapshot = os.path.join(work, "snapshot")
        shutil.copytree(f.devdir, self.snapshot)
        self.ops = {kind: self._count(kind) for kind in self.updates}

    def _restore(self):
        shutil.rmtree(self.fleet.devdir)
        shutil.copytree(self.snapshot, self.fleet.devdir)

    def _run(self, kind, fault=None, confirm=False):
        u, meta = self.updates[kind]
        return self.fleet.run(send=[meta], updates=[u], fault=fault, confirm=confirm)

    def _count(self, kind):
        self._restore()
        trace = os.path.join(self.work, "ops.trace")
        u, meta = self.updates[kind]
        self.fleet.run(send=[meta], updates=[u], env={"ESPSIM_TRACE": trace})
        with open(trace) as f:
            n = sum(1 for _ in f)
        os.unlink(trace)
        return n

    def _check_run(self, rc, lines, what):
        out = "\n".join(lines)
        if rc not in (0, SIGKILL) or "Traceback" in out or "Traceback" in self.fleet.last.stderr:
            return "%s: device failed (rc %d): %s" % (what, rc, (out + self.fleet.last.stderr)[-400:])
        if "BOOT recovery" in out:
            return "%s: no verified image booted" % what
        return None

    def trial(self, kind, faults):
        """Apply the faults in turn (each a run of the device from boot),
        then run on without faults; returns None or what went wrong."""
        self._restore()
        for fault in faults:
            rc, lines, _ = self._run(kind, fault)
            err = self._check_run(rc, lines, fault)
            if err:
                return err
        # On to the end: the update completes (reset), the next boot runs v2
        # on trial and confirms it.
        for i in range(6):
            rc, lines, reps = self._run(kind, confirm=True)
            err = self._check_run(rc, lines, "resume %d" % i)
            if err:
                return err
            if rc == 0 and "BOOT app_b %d" % self.v2_version in lines and \
                    any(r["state"] == "confirmed" for r in reps):
                break
        else:
            return "never reached v2 confirmed: %s" % "\n".join(lines)[-400:]
        st = factory.read_bootstate(self.fleet.devdir)
        if st["active"] != "app_b" or st["trial"]:
            return "boot state after confirming: %r" % st
        p = [q for q in updatelab.sim_device.load(self.fleet.devdir)["partitions"] if q["label"] == "app_b"][0]
        if updatelab.sim_device.read_flash(self.fleet.devdir, p["offset"], len(self.v2)) != self.v2:
            return "app_b does not hold v2"  # as the board reads it (decrypted under flash encryption)
        return None


def random_faults(rng, n_ops, count=5):
    out = []
    for _ in range(count):
        op = rng.randint(1, n_ops)
        out.append("cut:%d" % op if rng.random() < 0.6 else "tear:%d:%d" % (op, rng.randint(1, 4095)))
    return out


def random_campaign(work, seeds=100, cuts=5, first_seed=0):
    """Five consecutive random faults per seed (delta and full alternate).
    Returns (faults applied, failures [(seed, faults, why)])."""
    c = Campaign(work)
    n, failures = 0, []
    for seed in range(first_seed, first_seed + seeds):
        kind = ("delta", "full")[seed % 2]
        faults = random_faults(random.Random(seed), c.ops[kind], cuts)
        why = c.trial(kind, faults)
        n += len(faults)
        if why:
            failures.append((seed, faults, why))
    return n, failures, c.ops


def sweep_campaign(work, kind="full", stride=1, tear_bytes=(5,)):
    """A cut before every stride-th operation of a run from the start, and
    each of those operations torn after tear_bytes bytes."""
    c = Campaign(work)
    n, failures = 0, []
    for op in range(1, c.ops[kind] + 1, stride):
        for fault in ["cut:%d" % op] + ["tear:%d:%d" % (op, k) for k in tear_bytes]:
            why = c.trial(kind, [fault])
            n += 1
            if why:
                failures.append((fault, why))
    return n, failures, c.ops


def add_args(p):
    p.add_argument("--update-seeds", type=int, default=100,
                   help="update campaign: seeds of five consecutive random faults (default 100)")
    p.add_argument("--update-cuts", type=int, default=5, help="update campaign: faults per seed (default 5)")
    p.add_argument("--update-sweep-stride", type=int, default=1,
                   help="update campaign: cut before every Nth flash operation of a full update (default 1; 0 skips)")


def run(fig, args):
    work = tempfile.mkdtemp(prefix="ictl-soak-update-")
    try:
        n, failures, ops = random_campaign(os.path.join(work, "random"), args.update_seeds, args.update_cuts)
        fig.add("update_cut_points", n, "faults",
                "%d seeds x %d consecutive random power cuts/torn writes during a delta (%d flash ops) or full "
                "(%d ops) app update: download, apply, switch, trial boot; flash encryption on" % (args.update_seeds, args.update_cuts,
                                                                            ops["delta"], ops["full"]))
        if args.update_sweep_stride:
            m, sweep_fail, ops = sweep_campaign(os.path.join(work, "sweep"), "full", args.update_sweep_stride)
            fig.add("update_sweep_points", m, "faults",
                    "cut before, and tear at 5 bytes of, every %sflash operation of a full update (%d ops)"
                    % ("" if args.update_sweep_stride == 1 else "%dth " % args.update_sweep_stride, ops["full"]))
            failures += sweep_fail
        fig.add("update_cut_failures", len(failures), "count",
                "runs where a boot had no verified image, the device raised, or v2 was not confirmed in the end "
                "(must be 0)%s" % (": %r" % (failures[:3],) if failures else ""))
        return len(failures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
