"""A rollout fleet in a box, for the rollout tests and the rollout_auto_stops
soak: a real mosquitto (TLS, ACL, the fleet-updates operator), the service
database with devices registered through ingest (their hellos), an update
made as `ictl update create` makes it (update.create_for + save, tarred
for upload), and host-side device stand-ins (simdev) that answer the
update metadata they receive with a scripted report: "confirmed" (after
asking for and receiving every chunk), or "rejected" (a failing canary).

Stand-ins, not agents: what a real device does with the update is tested
in tests/host/test_update_mqtt.py and the fleet simulation (ictl.fleet)."""
import io
import os
import tarfile
import tempfile
import threading

from cryptography.hazmat.primitives.asymmetric import rsa

from ictl import broker as fleet_broker
from ictl import fleetkeys, pki
from ictl import image as app_image
from ictl import update as upd
from ictl.service import db as service_db
from ictl.service import ingest, rollout, simdev


def tar_dir(path):
    """The upload: a gzip tar of a directory `ictl update create` wrote."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in sorted(os.listdir(path)):
            tf.add(os.path.join(path, name), arcname=name)
    return buf.getvalue()


class Responder:
    """One stand-in device answering update metadata: fail=None -> asks for
    the chunks, then reports confirmed; fail="rolled_back" -> downloads,
    then reports rolled_back; fail="silent" -> never answers (times out);
    any other fail -> rejected with that reason. hostile: a download
    report with an out-of-range pct and markup in its reason comes first
    (the rollout refuses it), then a well-formed one."""

    def __init__(self, dev, broker, fail=None):
        self.dev = dev
        self.fail = fail
        self.hostile = False
        self.metadata = 0
        self.chunks = set()
        self.uid = None
        self.n = None
        self._lock = threading.Lock()
        self.client = dev.connect(broker.host, broker.port, broker.ca_path, on_message=self._on)
        self.client.subscribe(dev.topic("update"), qos=1)

    def _report(self, state, **kw):
        self.dev.publish(self.dev.update_report(state, self.uid, **kw), wait=False)

    def _on(self, cl, ud, msg):
        p = msg.payload
        with self._lock:
            if p[:1] == b"M":
                import cbor2
                self.metadata += 1
                m = cbor2.loads(cbor2.loads(p[1:]).value[2])
                self.uid, self.n = m["id"].hex(), m["n"]
                self.chunks = set()
                if self.fail == "silent":
                    return
                if self.fail and self.fail != "rolled_back":
                    self._report("rejected", reason=self.fail)
                elif self.hostile:      # numbers and text a compromised device might send,
                    # refused by ictl.update.check_report; then a well-formed request
                    self._report("downloading", next=0, want=self.n, pct=2 ** 40, reason="<svg onload=alert(1)>")
                    self._report("downloading", next=0, want=self.n, pct=0)
                else:
                    self._report("downloading", next=0, want=self.n, pct=0)
            elif p[:1] == b"C" and self.fail in (None, "rolled_back"):
                self.chunks.add(int.from_bytes(p[17:21], "big"))
                if len(self.chunks) == self.n:
                    self._report("rolled_back" if self.fail else "confirmed", ver=2 << 24)


class RolloutRig:
    def __init__(self, tmp, n=6, fail=()):
        self.tmp = os.path.abspath(str(tmp))
        self.n = n
        self.fail = set(fail)
        self.broker = fleet_broker.Broker(os.path.join(self.tmp, "broker"), die_with_parent=False,
                                          operators=fleet_broker.DEFAULT_OPERATORS + (upd.UPDATER_ID,))
        self.db_url = "sqlite:///" + os.path.join(self.tmp, "svc.db")
        self.responders = {}

    def __enter__(self):
        br = self.broker.start()
        self.ca = pki.load_ca(br.pki_dir)
        self.fleet_key = fleetkeys.ensure(br.pki_dir)
        self.db = service_db.connect(self.db_url)
        self.db.migrate()
        self.devices = [simdev.SimDevice(self.ca, fleetkeys.public_point(self.fleet_key), "sim-%04d" % i)
                        for i in range(self.n)]
        w = ingest.Ingest(self.db_url, self.fleet_key, br.ca_path)
        w.process_batch([d.hello() for d in self.devices])
        w.db.close()
        for d in self.devices:
            self.responders[d.id] = Responder(d, br, "bad_signature" if d.id in self.fail else None)
        self.sign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = app_image.key_id_for(self.sign_key.public_key())
        return self

    def update_archive(self, devices=None, size=9000):
        """A full firmware-target update for devices (default all), tarred."""
        devs = [d for d in self.devices if devices is None or d.id in devices]
        new = b"\xe9" + os.urandom(size - 1)
        _, full, metas = upd.create_for([(d.id, pki.cert_der(d.cert)) for d in devs], new, None, self.sign_key,
                                        self.key_id, target="fw", version=2, counter=1, hwid="ab" * 6)
        with tempfile.TemporaryDirectory() as out:
            full.save(os.path.join(out, "full"), metas["full"])
            return tar_dir(out)

    def engine(self, **kw):
        kp, cp = upd.updater_credentials(self.broker.pki_dir)
        return rollout.Engine(self.db_url, self.broker.host, self.broker.port, self.broker.ca_path, cp, kp,
                              prefix=self.broker.prefix, **kw)

    def __exit__(self, *exc):
        for r in self.responders.values():
            r.dev.close()
        self.db.close()
        self.broker.stop()

