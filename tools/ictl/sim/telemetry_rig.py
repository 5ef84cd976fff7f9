"""A fleet in a box for the telemetry tests and campaigns: a real mosquitto
(TLS, client certificates, ACL), the fleet data key, one simulated device
running the payload path on the unix port (tests/device/telemetry_peer.py)
and the fleet console.

    with Rig(tmp) as rig:
        con = rig.console().start()
        peer = rig.peer(readings=5)
        peer.wait_for("DONE")

Development only: the device key is made on the host here."""
import json
import os
import subprocess
import threading
import time

from cryptography.hazmat.primitives import serialization

from ictl import ROOT, ToolError, broker as fleet_broker, fleetkeys, pki
from ictl.sim import device as sim_device
from ictl.sim import wifisim
from ictl.console import Console
from ictl.sim.faults import MICROPYTHON

PEER_PATH = ":".join([".frozen"] + [os.path.join(ROOT, p) for p in ("lib/ironclad", "firmware/unix", "tests/device")])
# The library loads from source on the unix port (compiled into the heap,
# with mbedTLS's buffers); on a board it is frozen. 384: the hostile peer of
# the console's page tests ran out at 320 in a fresh clone (longer paths).
PEER_HEAP_KIB = 384


class Peer:
    """A running device process; its output lines are collected."""

    def __init__(self, cmd, env, cwd):
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self.lines.append("EXIT %s" % self.proc.wait())
            self._cv.notify_all()

    def count(self, prefix):
        with self._cv:
            return sum(1 for l in self.lines if l.startswith(prefix))

    def wait_for(self, prefix, n=1, timeout=30):
        """Until n output lines start with prefix; ToolError (with the
        output) on timeout or exit."""
        end = time.monotonic() + timeout
        with self._cv:
            while sum(1 for l in self.lines if l.startswith(prefix)) < n:
                left = end - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1].startswith("EXIT") and prefix != "EXIT"):
                    raise ToolError("device: no %d x %r within %ds:\n%s" % (n, prefix, timeout, "\n".join(self.lines[-30:])))
                self._cv.wait(min(left, 0.5))

    def puts(self):
        """The reading seqs whose put() returned."""
        with self._cv:
            return [int(l.split()[1]) for l in self.lines if l.startswith("PUT ")]

    def kill(self):
        """Power cut / reset: SIGKILL, nothing runs after it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout=30):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Rig:
    def __init__(self, tmp, device_id="dev-0042"):
        self.tmp = os.path.abspath(str(tmp))
        self.device_id = device_id
        self.broker = fleet_broker.Broker(os.path.join(self.tmp, "broker"), die_with_parent=False)
        self.peers = []
        self.consoles = []

    def __enter__(self):
        br = self.broker.start()
        ca = pki.load_ca(br.pki_dir)
        self.fleet_key = fleetkeys.ensure(br.pki_dir)
        key = pki.new_key()
        self.cert = pki.issue_client_cert(ca, key.public_key(), self.device_id)
        self.dir = os.path.join(self.tmp, "creds")
        os.makedirs(self.dir, exist_ok=True)
        files = {"ca.der": pki.cert_der(ca.cert), "cert.der": pki.cert_der(self.cert),
                 "key.der": key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption()),
                 "fleet.pub": fleetkeys.public_point(self.fleet_key)}
        for name, data in files.items():
            with open(os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
        self.devdir = os.path.join(self.tmp, "device")
        sim_device.create(self.devdir, force=True, flash_encryption=True)  # a field board: production
        for d in ("spool", "events"):
            os.makedirs(os.path.join(self.tmp, d), exist_ok=True)
        return self

    def __exit__(self, *exc):
        for c in self.consoles:
            c.stop()
        for p in self.peers:
            p.kill()
        self.broker.stop()

    def peer(self, **cfg):
        """Start the device (again: same flash, spool and seq counter)."""
        c = {"dir": self.dir, "device_id": self.device_id, "host": self.broker.host, "port": self.broker.port,
             "prefix": self.broker.prefix, "spool": os.path.join(self.tmp, "spool"),
             "events": os.path.join(self.tmp, "events"), "seq_file": os.path.join(self.tmp, "seq"),
             "readings": 3, "interval_ms": 200,
             # the host's time, which the peer sets its clock to (a board's
             # reads 2000-01-01 until provisioning or SNTP sets it)
             "now": int(time.time())}
        c.update(cfg)
        path = os.path.join(self.tmp, "peer.json")
        with open(path, "w") as f:
            json.dump(c, f)
        env = dict(os.environ, MICROPYPATH=PEER_PATH, ESPSIM_DIR=self.devdir, **wifisim.LAB_NET)
        env.pop("ESPSIM_FAULT", None)
        p = Peer([MICROPYTHON, "-X", "heapsize=%dK" % PEER_HEAP_KIB, "-c",
                  "import telemetry_peer; telemetry_peer.main(%r)" % path], env, self.tmp)
        self.peers.append(p)
        return p

    def console(self):
        c = Console.for_broker(self.broker, self.fleet_key, os.path.join(self.tmp, "console.json"))
        self.consoles.append(c)
        return c
