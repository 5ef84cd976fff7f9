"""ictl run: the whole product on one machine, end to end (what `make run` does).

1. start the embedded broker (mosquitto: TLS, client certificates required,
   per-device ACL, 127.0.0.1, a free port);
2. make development keys: the fleet CA, the image signing key, the fleet data
   key (DEVELOPMENT ONLY: they live in the run directory);
3. build and sign app v1 from app/, flash it into a new virtual board and
   provision the board with `ictl provision` (the real mpremote, over the
   board's pty): the board makes its own key pair;
4. boot it: the frozen boot.py verifies the image before running a line of it;
5. stream the decrypted telemetry and security events in the fleet console;
6. build v2, roll it out as a signed, encrypted delta update, and watch the
   device reboot into v2 on trial and confirm it;
7. send a tampered update and watch it being rejected;
then keep streaming until Ctrl-C (or --readings). Ctrl-C stops everything:
no broker or device process is left behind.

`--part device` runs steps 1-4 and keeps the device running (its broker
settings are written to <dir>/run.json); `--part console` attaches the fleet
console to such a run from another terminal."""
import contextlib
import json
import os
import queue
import shutil
import sys
import threading
import time

from ictl import ROOT, ToolError, broker as fleet_broker, pki
from ictl.sim import board as vboard
from ictl import console as fleet_console
from ictl.sim import device as sim_device
from ictl.sim import factory
from ictl.sim.demo import Keys, build_app, bump_version
from ictl import fleetkeys, image as app_image
from ictl.sim import wifisim
from ictl import provision as prov
from ictl.timeserver import TimeServer
from ictl import update as upd
from ictl.service import runner as service_runner

STATE = "run.json"


def register(sub):
    p = sub.add_parser("run", help="the whole product end to end on a virtual board (what `make run` does)")
    p.add_argument("--dir", default=os.path.join(ROOT, "build", "run"), help="state directory (default build/run)")
    p.add_argument("--part", choices=("all", "device", "console"), default="all",
                   help="all (default); device: broker and provisioned device only; console: attach to a running --part device")
    p.add_argument("--readings", type=int, default=0, metavar="N",
                   help="stop after N readings once the update demo is done (default: run until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for each step (default 90)")
    p.add_argument("--heap", type=int, default=vboard.APP_HEAP_KIB, metavar="KIB",
                   help="the app's heap, as on an ESP32 that runs its code from flash (default %d KiB: "
                        "see ictl.sim.board.APP_HEAP_KIB)" % vboard.APP_HEAP_KIB)
    p.add_argument("--service-port", type=int, default=0, metavar="PORT",
                   help="the fleet service's web console port (default: a free one; see docs/service.md)")
    p.add_argument("--no-service", action="store_true", help="do not start the fleet service (`ictl serve`)")
    p.set_defaults(func=do_run)


def say(text):
    print("run: " + text, flush=True)


def boot_lines(board, since):
    """The console lines of the device since byte `since` of its log."""
    with open(board.log_path, "rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace").splitlines()


def log_size(board):
    try:
        return os.path.getsize(board.log_path)
    except OSError:
        return 0


def wait_log(board, since, needle, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in boot_lines(board, since):
            if needle in line:
                return line
        time.sleep(0.2)
    raise ToolError("the device did not say %r within %ds: see %s" % (needle, timeout, board.log_path))


class Stream:
    """The fleet console in a thread, printing what it opens: a person can follow it."""

    def __init__(self, con):
        self.con = con
        self.q = queue.Queue()
        self.stop = threading.Event()
        self.t = threading.Thread(target=con.run, args=(self._show,), kwargs={"stop": self.stop}, daemon=True)

    def _show(self, m):
        print("  console | %s" % m, flush=True)
        self.q.put(m)

    def start(self):
        self.t.start()
        return self

    def wait(self, pred, what, timeout):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise ToolError("the console saw no %s within %ds" % (what, timeout))
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(m):
                return m

    def close(self):
        self.stop.set()
        self.t.join(5)


def provision(board, br, keys, root, ntp=None):
    ca = pki.load_ca(br.pki_dir)
    # The simulated board's access point: an SSID and a fresh passphrase the
    # board is provisioned with.
    wifi = wifisim.simulated_ap(board.devdir)
    p = prov.Provisioner(board.port, ca, prov.broker_settings(br.host, br.port, "localhost", br.prefix, ntp=ntp),
                         fleetkeys.public_point(keys.fleet), operator="make-run",
                         log_path=os.path.join(root, "provisioning.jsonl"),
                         out=lambda s: print("  provision | " + s, flush=True), wifi=wifi)
    return p.run()


def do_run(args):
    root = os.path.abspath(args.dir)
    if args.part == "console":
        return attach_console(root)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    devdir = os.path.join(root, "device")
    say("starting the broker (mosquitto, TLS on 127.0.0.1, client certificates required, per-device ACL)")
    with contextlib.ExitStack() as stack:
        br = stack.enter_context(fleet_broker.Broker(os.path.join(root, "broker"),
                                                     operators=fleet_broker.DEFAULT_OPERATORS
                                                     + service_runner.operators(1)))
        say("broker on %s:%d" % (br.host, br.port))
        ts = stack.enter_context(TimeServer())
        say("time server (SNTP) on %s: the board sets its clock from it before TLS" % ts.address)
        keys = Keys(root)
        say("development keys in %s (DEVELOPMENT ONLY: fleet CA, image signing key %s, fleet data key)" % (keys.dir, keys.key_id))
        if not args.no_service and args.part == "all":
            stack.enter_context(service_runner.for_run(root, br, fleetkeys.path_in(keys.dir), args.service_port, say))
        # A production board, as a field board is: flash encryption on (its app
        # slots, boot state and filesystem are ciphertext on flash.bin).
        sim_device.create(devdir, flash_encryption=True)
        hwid = sim_device.load(devdir)["hwid"]
        v1 = build_app("1.0.0", 1, keys, os.path.join(root, "app-v1.img"), hwid)
        factory.trust_device(devdir, [(keys.key_id, keys.signing.public_key())])
        factory.flash_image(devdir, v1)
        say("app v1 built from app/, signed (RSA-3072-PSS, key %s) and flashed into slot app_a (%d bytes)" % (keys.key_id, len(v1)))
        with vboard.VirtualBoard(devdir, heap_kib=vboard.PORT_HEAP_KIB, app_heap_kib=args.heap) as b:
            say("virtual board on %s (unix port; the app's heap %d KiB, its code held apart as in flash); "
                "provisioning it over USB with mpremote" % (b.port, args.heap))
            rec = provision(b, br, keys, root, ntp=ts.address)
            dev = rec["device_id"]
            with open(os.path.join(root, STATE), "w") as f:
                json.dump({"device": dev, "broker": [br.host, br.port, br.prefix, br.pki_dir, br.ca_path],
                           "keys": keys.dir}, f)
            con = fleet_console.Console.for_broker(br, keys.fleet, os.path.join(root, "console-state.json"))
            con.start()
            since = log_size(b)
            b.proc.kill()  # power-cycle: the device boots, verifies its image and starts the agent
            say("power-cycled the board; its boot:")
            wait_log(b, since, "agent: connected", args.timeout)
            for line in boot_lines(b, since):
                print("  device  | " + line, flush=True)
            if args.part == "device":
                say("device running; attach a console with: ictl run --part console --dir %s (Ctrl-C stops)" % root)
                con.stop()
                _forever(b, since)
                return
            s = Stream(con).start()
            try:
                s.wait(lambda m: m.kind == "telemetry", "reading", args.timeout)
                v2 = demo_update(b, br, keys, dev, hwid, v1, root, s, con, args.timeout)
                demo_tamper(br, keys, dev, v1, v2, con, s, args.timeout)
                n = 0
                say("streaming; Ctrl-C stops" if not args.readings else "streaming %d readings" % args.readings)
                while not args.readings or n < args.readings:
                    s.wait(lambda m: m.kind == "telemetry", "reading", args.timeout)
                    n += 1
            finally:
                s.close()
                con.stop()
    say("stopped; broker and device shut down")


def _forever(b, since):
    shown = since
    while True:
        time.sleep(1)
        size = log_size(b)
        if size > shown:
            for line in boot_lines(b, shown):
                print("  device  | " + line, flush=True)
            shown = size


def demo_update(b, br, keys, dev, hwid, v1, root, s, con, timeout):
    v2 = build_app("2.0.0", 2, keys, os.path.join(root, "app-v2.img"), hwid, change=bump_version("2"))
    say("app v2 built (security counter 2); rolling it out as a signed, encrypted delta update")
    res = upd.rollout([(dev, con.devices[dev]["pub"])], v1, v2, br, keys.signing, keys.key_id,
                      timeout=timeout * 3, until=("confirmed", "rolled_back", "rejected"), out=sys.stdout)
    st = res["devices"][dev]
    print(flush=True)
    say("rollout: %s; %d bytes over MQTT for a %d-byte image" % (st.get("state"), res["bytes"], len(v2)))
    if st.get("state") != "confirmed":
        raise ToolError("the update did not confirm: %s (see %s)" % (st, b.log_path))
    s.wait(lambda m: m.kind == "telemetry", "reading from v2", timeout)
    return v2


def demo_tamper(br, keys, dev, v1, v2, con, s, timeout):
    """An update whose content was altered after signing: the chain hash in
    the signed metadata no longer matches, so the device refuses it."""
    u = upd.Update.create(v2, v1)
    meta = u.metadata(dev, con.devices[dev]["pub"], keys.signing, keys.key_id)
    bad = bytearray(meta)
    bad[len(bad) // 2] ^= 0x01
    say("sending an update whose signed metadata was altered in transit (one bit)")
    kp, cp = upd.updater_credentials(br.pki_dir)
    r = upd.Rollout(br.host, br.port, br.ca_path, cp, kp, prefix=br.prefix).connect()
    try:
        r._publish(dev, bytes(bad))
        m = s.wait(lambda m: m.kind == "events" and any(rec["kind"] == "update" and rec["outcome"] == "rejected"
                                                        for rec in m.records), "update rejection event", timeout)
    finally:
        r.close()
    say("the device rejected it and said why: %s" % m.text)


def attach_console(root):
    try:
        with open(os.path.join(root, STATE)) as f:
            st = json.load(f)
    except (OSError, ValueError):
        raise ToolError("no running `ictl run --part device` in %s (no %s)" % (root, STATE)) from None
    host, port, prefix, pki_dir, ca_path = st["broker"]
    kp, cp = pki.ensure_console_cert(pki.load_ca(pki_dir))
    con = fleet_console.Console(host, port, ca_path, cp, kp, fleetkeys.load(fleetkeys.path_in(st["keys"])), prefix,
                                os.path.join(root, "console-state.json"))
    con.start()
    say("fleet console on %s:%d; Ctrl-C stops" % (host, port))
    try:
        con.run(lambda m: print("  console | %s" % m, flush=True))
    finally:
        con.stop()
