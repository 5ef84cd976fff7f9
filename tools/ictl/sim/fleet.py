"""Fleet simulation: N virtual devices on one broker, a delta update rolled
out to all of them, with faults (power lost mid-update on a share of the
devices, the broker restarted mid-rollout).

Each device is a unix-port process booting its own simulated flash through
the precompiled firmware (ictl.sim.unixfw), exactly as the virtual board does,
but without a pty: a supervisor powers a device up again whenever its
process ends (machine.reset(), a power cut). Devices are provisioned by the
same steps as `ictl provision` (ironclad.provision on the device, the fleet
CA on the host), run in a device process instead of over mpremote, which
would only add a serial link per device.

    res = simulate(n=50, root="build/fleet", cut_share=0.1, broker_restart=True)

Returns figures (time to 100%, bytes delta vs full, failures, broker memory,
bricked devices) and writes a per-device timeline PNG."""
import os
import random
import shutil
import subprocess
import sys
import threading
import time

from ictl import ToolError, broker as fleet_broker, pki
from ictl.sim import unixfw
from ictl import console as fleet_console
from ictl.sim import device as sim_device
from ictl.sim import factory
from ictl import fleetkeys, image as app_image
from ictl.sim import wifisim
from ictl import provision as prov
from ictl.timeline import timeline_png
from ictl import update as upd
from ictl.sim.board import PORT_HEAP_KIB, app_heap_env
from ictl.sim.demo import Keys, bump_version, build_app
from ictl.sim import MICROPYTHON  # IRONCLAD_MICROPYTHON picks another build

FINAL = ("confirmed", "rolled_back", "rejected")
READING_INTERVAL_S = 30
INTERVAL_CODE = "import esp32\nn = esp32.NVS('ic_agent')\nn.set_i32('interval', %d)\nn.commit()\n" % READING_INTERVAL_S


def _fw_env(devdir, raw=False):
    fw = unixfw.build()
    env = dict(os.environ, MICROPYPATH=":".join(os.path.join(fw, p) for p in ("lib/ironclad", "firmware/unix")),
               ESPSIM_DIR=devdir, ESPSIM_FIRMWARE=fw, **app_heap_env())  # each device an ESP32's heap
    for k in ("ESPSIM_RAW_REPL", "ESPSIM_SOFT_REBOOT", "ESPSIM_FAULT"):
        env.pop(k, None)
    if raw:
        env["ESPSIM_RAW_REPL"] = "1"
    return fw, env


class DirectBoard(prov.Board):
    """A provisioning step run in a device process on the board's flash
    (booted as for the raw REPL: boot.py, no app), instead of over mpremote."""

    def __init__(self, devdir, timeout=120):
        super().__init__("device:" + devdir, timeout=timeout)
        self.devdir = devdir

    def _exec(self, code):
        fw, env = _fw_env(self.devdir, raw=True)
        start = os.path.join(fw, "firmware", "unix", "start.py")
        boot = "exec(open(%r).read())\n" % start
        return subprocess.run([MICROPYTHON, "-X", "heapsize=%dK" % PORT_HEAP_KIB, "-c", boot + code],
                              capture_output=True, text=True, timeout=self.timeout, env=env, cwd=self.devdir)


class Device:
    """One simulated device's process, powered up again whenever it ends."""

    def __init__(self, name, devdir):
        self.name = name
        self.devdir = devdir
        self.proc = None
        self.boots = 0
        self.cuts = 0
        self.off_until = 0.0
        self.log = open(os.path.join(devdir, "console.log"), "ab")

    def power_on(self):
        fw, env = _fw_env(self.devdir)
        self.proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=%dK" % PORT_HEAP_KIB, os.path.join(fw, "firmware", "unix", "start.py")],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.devdir, start_new_session=True,
                                     preexec_fn=fleet_broker.die_with_parent)  # none outlives a killed simulation
        self.boots += 1

    def power_cut(self, off_s):
        """Pull the plug (SIGKILL: nothing is flushed) and keep it off a while."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.cuts += 1
        self.off_until = time.monotonic() + off_s

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Supervisor:
    """Restarts devices whose process ended (a reset, or power back after a cut)."""

    def __init__(self, devices):
        self.devices = devices
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()

    def _loop(self):
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for d in self.devices:
                    if d.proc is not None and d.proc.poll() is not None and now >= d.off_until:
                        d.power_on()

    def start(self):
        for d in self.devices:
            d.power_on()
        self._t.start()

    def cut(self, d, off_s):
        with self._lock:
            d.power_cut(off_s)

    def stop(self):
        self._stop.set()
        self._t.join(5)
        for d in self.devices:
            d.stop()


def provision_all(names, devdirs, br, keys, log_path, workers=2):
    """Provision every device (two at a time: one per core)."""
    ca = pki.load_ca(br.pki_dir)
    settings = prov.broker_settings(br.host, br.port, "localhost", br.prefix)
    pub = fleetkeys.public_point(keys.fleet)
    todo = list(zip(names, devdirs))
    errors = []
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not todo:
                    return
                name, devdir = todo.pop(0)
            p = prov.Provisioner("device:" + name, ca, settings, pub, device_id=name, operator="fleet-sim",
                                 log_path=log_path, out=lambda s: None, wifi=wifisim.simulated_ap(devdir))
            p.board = DirectBoard(devdir)
            try:
                p.run()
                # A fleet reports every 30 s (the agent's default of 2 s suits one
                # demo board, not 200 on two cores with one console decrypting all).
                r = p.board._exec(INTERVAL_CODE)
                if r.returncode:
                    raise ToolError("setting the reading interval failed: %s" % (r.stderr or r.stdout)[-200:])
            except ToolError as e:
                errors.append("%s: %s" % (name, e))

    ts = [threading.Thread(target=work) for _ in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise ToolError("provisioning failed for %d devices: %s" % (len(errors), errors[0]))


def bootable(devdir, keys):
    """(True, version) if the device's active slot, or the fallback its boot
    state names, holds an image that verifies as the boot code checks it;
    (False, why) otherwise: a device that could not boot."""
    cfg = sim_device.load(devdir)
    st = factory.read_bootstate(devdir)
    if st is None:
        return False, "no boot state"
    trust = {keys.key_id: keys.signing.public_key()}
    why = "no slot"
    for slot in (st["active"], st.get("fallback")):
        if not slot:
            continue
        p = factory._partition(cfg, slot)
        # The slot as the board reads it (decrypted under flash encryption).
        h, why = app_image.verify(sim_device.read_flash(devdir, p["offset"], p["size"]), trust, hwid=cfg["hwid"],
                                  floor=st["floor"])
        if why is None:
            return True, app_image.version_str(h["version"])
    return False, why


def prepare(root, n, br, say):
    """n devices under root/devices, v1 and v2 built, every device flashed
    with v1 and provisioned through br: (keys, names, devdirs, v1, v2)."""
    keys = Keys(root)
    names = ["sim-%04d" % i for i in range(n)]
    devdirs = [os.path.join(root, "devices", nm) for nm in names]
    hwid = None
    for d in devdirs:
        sim_device.create(d, flash_encryption=True)  # field boards: production
        hwid = hwid or sim_device.load(d)["hwid"]
    v1 = build_app("1.0.0", 1, keys, os.path.join(root, "app-v1.img"), hwid)
    v2 = build_app("2.0.0", 2, keys, os.path.join(root, "app-v2.img"), hwid, change=bump_version("2"))
    for d in devdirs:
        factory.trust_device(d, [(keys.key_id, keys.signing.public_key())])
        factory.flash_image(d, v1)
    t = time.monotonic()
    provision_all(names, devdirs, br, keys, os.path.join(root, "provisioning.jsonl"))
    say("%d devices flashed with v1 and provisioned in %.0f s" % (n, time.monotonic() - t))
    return keys, names, devdirs, v1, v2


def simulate(n=50, root=None, cut_share=0.1, broker_restart=True, seed=1, timeout=900, png=None, out=sys.stdout):
    rnd = random.Random(seed)
    root = os.path.abspath(root)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    say = lambda s: print("fleet: " + s, file=out, flush=True)
    operators = fleet_broker.DEFAULT_OPERATORS + (upd.UPDATER_ID,)
    with fleet_broker.Broker(os.path.join(root, "broker"), operators=operators) as br:
        keys, names, devdirs, v1, v2 = prepare(root, n, br, say)
        con = fleet_console.Console.for_broker(br, keys.fleet, os.path.join(root, "console-state.json"))
        con.start()
        devices = [Device(nm, d) for nm, d in zip(names, devdirs)]
        sup = Supervisor(devices)
        sup.start()
        try:
            t = time.monotonic()
            for nm in names:
                con.wait_device(nm, timeout=max(60, n * 2))
            say("all %d devices online (%.0f s)" % (n, time.monotonic() - t))
            res = _rollout(br, keys, names, con, v1, v2, devices, sup, rnd, cut_share, broker_restart, timeout, say)
        finally:
            sup.stop()
            con.stop()
        res["broker_rss_kib"] = res.pop("broker_peak_kib")
    results = {}
    bricked = []
    for nm, d in zip(names, devdirs):
        ok, ver = bootable(d, keys)
        if not ok:
            bricked.append(nm)
        last = res["status"].get(nm, {})
        results[nm] = {"state": last.get("state"), "reason": last.get("reason"), "boots": ver}
    res["bricked"] = bricked
    res["results"] = results
    res["n"] = n
    if png:
        timeline_png(res, png)
    return res


def _rollout(br, keys, names, con, v1, v2, devices, sup, rnd, cut_share, broker_restart, timeout, say):
    pubs = [(nm, con.devices[nm]["pub"]) for nm in names]
    delta, full, metas = upd.create_for(pubs, v2, v1, keys.signing, keys.key_id)
    plans = {nm: [(delta, metas["delta"][nm]), (full, metas["full"][nm])] for nm in names}
    kp, cp = upd.updater_credentials(br.pki_dir)
    # Offer the metadata again only after a device was silent for a while: the
    # more devices share two cores, the longer an honest device takes to answer.
    r = upd.Rollout(br.host, br.port, br.ca_path, cp, kp, prefix=br.prefix, out=open(os.devnull, "w"),
                     resend_s=max(20.0, 0.3 * len(names)))
    r.connect()
    victims = rnd.sample(devices, max(1, int(round(len(devices) * cut_share)))) if cut_share else []
    faults = {"cuts": [], "broker_restart": None}
    peak = [br.rss_kib()]
    stop = threading.Event()

    def chaos():
        # Power cuts: each victim loses power once, while its update is under way.
        pending = list(victims)
        restarted = not broker_restart
        while not stop.wait(0.02):
            try:
                peak[0] = max(peak[0], br.rss_kib())
            except ToolError:
                pass
            st = dict(r.status)
            for d in list(pending):
                # mid-update: downloading, or applied and not yet switched over
                if st.get(d.name, {}).get("state") in ("downloading", "applied"):
                    sup.cut(d, rnd.uniform(0.5, 3.0))
                    faults["cuts"].append((time.monotonic() - r.t0, d.name))
                    pending.remove(d)
            busy = sum(1 for s in st.values() if s.get("state") in ("downloading", "applied", "trial") + FINAL)
            if not restarted and busy >= max(1, len(names) // 3):
                faults["broker_restart"] = time.monotonic() - r.t0
                br.restart()
                restarted = True

    th = threading.Thread(target=chaos, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        status = r.run(plans, until=FINAL, timeout=timeout, progress=False)
        for _ in range(3):
            # Power lost before the slot switch reached flash: the device still
            # runs v1 and says so; the fleet sends it the update again.
            again = {nm: plans[nm] for nm, st in status.items()
                     if st.get("state") == "rejected" and st.get("reason") == "interrupted"}
            if not again:
                break
            say("sending the update again to %d devices interrupted by a power cut" % len(again))
            status.update(r.run(again, until=FINAL, timeout=timeout, progress=False))
    finally:
        stop.set()
        th.join(5)
        r.close()
    took = time.monotonic() - t0
    full_bytes = sum(len(metas["full"][nm]) for nm in names) + full.mqtt_bytes() * len(names)
    say("rollout finished in %.0f s: %s" % (took, _counts(status)))
    return {"status": status, "seconds": took, "bytes": r.bytes_sent, "full_bytes": full_bytes,
            "timeline": r.timeline, "faults": faults, "broker_peak_kib": peak[0],
            "reboots": sum(d.boots for d in devices), "cut_devices": [d.name for d in victims]}


def _counts(status):
    c = {}
    for s in status.values():
        c[s.get("state")] = c.get(s.get("state"), 0) + 1
    return ", ".join("%s %d" % kv for kv in sorted(c.items(), key=lambda kv: str(kv[0])))
