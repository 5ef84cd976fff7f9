"""ictl run: the agent's main job on a simulated device, end to end.

Starts the embedded broker (mosquitto, TLS, client certificates required,
127.0.0.1, a free port, a development CA), boots a virtual board on the unix
port, configures it over mpremote, lets the agent connect over mutual TLS and
publish readings, and shows them as the fleet console receives them.
Ctrl-C stops everything: no broker or device process is left behind.

Development only: the device key here is made on the host. Production devices
make their own key (see `ictl provision`)."""
import json
import os
import queue
import shutil
import ssl
import subprocess
import sys
import time

from ictl import ROOT, ToolError, broker as fleet_broker, pki
from ictl import board as vboard
from ictl import device as sim_device
from ictl import image as app_image

MPREMOTE = os.path.join(os.path.dirname(sys.executable), "mpremote")
DEVICE_ID = "dev-0001"


def register(sub):
    p = sub.add_parser("run", help="run the agent on a virtual board against a local TLS broker and show its readings")
    p.add_argument("--dir", default=os.path.join(ROOT, "build", "run"), help="state directory (default build/run)")
    p.add_argument("--readings", type=int, default=0, metavar="N", help="stop after N readings (default: run until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for each reading (default 60)")
    p.set_defaults(func=do_run)


def mpremote(port, *args):
    r = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise ToolError("mpremote %s failed: %s" % (" ".join(args[:2]), (r.stderr or r.stdout).strip().splitlines()[-1:]))
    return r.stdout


def configure_device(b, br, stage):
    """Development set-up: a host-made key and certificate for the device, the
    CA and the broker address, copied onto the device's filesystem."""
    ca = pki.load_ca(br.pki_dir)
    key, cert = pki.make_client_key_and_cert(ca, DEVICE_ID)
    os.makedirs(stage, exist_ok=True)
    files = {
        "ca.der": pki.cert_der(ca.cert),
        "cert.der": pki.cert_der(cert),
        "key.der": pki.key_der(key),
        "config.json": json.dumps({"device_id": DEVICE_ID, "host": br.host, "port": br.port,
                                   "hostname": "localhost", "prefix": br.prefix, "interval_s": 2}).encode(),
    }
    args = ["exec", "import os\ntry: os.mkdir('/ironclad')\nexcept OSError: pass"]
    for name, data in files.items():
        path = os.path.join(stage, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
        args += ["+", "cp", path, ":/ironclad/" + name]
    mpremote(b.port, *args)
    shutil.rmtree(stage)  # the key lives on the device only from here on


def console(br, topics):
    """A fleet-console subscriber (paho-mqtt, mutual TLS); returns (client, queue)."""
    import paho.mqtt.client as mqtt

    q = queue.Queue()
    kp, cp = pki.ensure_console_cert(pki.load_ca(br.pki_dir))
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pki.CONSOLE_ID)
    c.tls_set(ca_certs=br.ca_path, certfile=cp, keyfile=kp, cert_reqs=ssl.CERT_REQUIRED)
    c.on_message = lambda cl, ud, msg: q.put((msg.topic, msg.payload))
    c.on_connect = lambda cl, ud, fl, rc, props: [cl.subscribe(t, qos=1) for t in topics]
    c.connect(br.host, br.port)
    c.loop_start()
    return c, q


def do_run(args):
    root = os.path.abspath(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    devdir = os.path.join(root, "device")
    print("run: starting the broker (mosquitto, TLS on 127.0.0.1, client certificates required)")
    with fleet_broker.Broker(os.path.join(root, "broker")) as br:
        print("run: broker on %s:%d, development CA in %s (DEVELOPMENT ONLY)" % (br.host, br.port, br.pki_dir))
        cl, q = console(br, ["%s/+/telemetry" % br.prefix])
        sim_device.create(devdir)
        # A development signing key, trusted by this board's firmware; the
        # app/ folder built, signed and flashed as the active image.
        app_image.keygen(os.path.join(root, "image-key.pem"))
        app_image.setup_device(devdir, os.path.join(ROOT, "app"), os.path.join(root, "image-key.pem"))
        with vboard.VirtualBoard(devdir) as b:
            print("run: virtual board on %s; configuring it with mpremote" % b.port)
            configure_device(b, br, os.path.join(root, "stage"))
            _reboot(b)
            print("run: device booted; readings as the fleet console receives them (Ctrl-C stops):")
            n = 0
            try:
                while not args.readings or n < args.readings:
                    try:
                        topic, payload = q.get(timeout=args.timeout)
                    except queue.Empty:
                        raise ToolError("no reading from the device within %ds: see %s" % (args.timeout, b.log_path))
                    n += 1
                    print("  %s  %s" % (topic, payload.decode(errors="replace")), flush=True)
            finally:
                cl.loop_stop()
                cl.disconnect()
    print("run: stopped; broker and device shut down")


def _reboot(b):
    """Power-cycle the virtual board: the device boots and runs the agent."""
    b.proc.kill()
