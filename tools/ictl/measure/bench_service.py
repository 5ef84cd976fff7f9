"""Fleet service ingest figures (docs/service.md "Scaling").

ingest_rate_ratio: sealed readings opened, checked and stored per second
by one ingest worker (SQLite) / messages per second received by a bare
paho subscriber (QoS 1, no processing), the same burst from the same
stand-in devices through the same mosquitto. Each rate: messages / seconds
from the first publish to the last message stored (or received); best of
ROUNDS. A burst stays under mosquitto's per-client queue (max_queued_messages,
1000 by default): beyond it the broker drops QoS 1 messages for a slow
subscriber.

ingest_workers_ratio: the same rate with two ingest processes sharing the
subscription (`ictl serve --no-web --no-rollouts --shared --first-worker K`,
as a scaled-out deployment runs them) / one such process, both into a real
PostgreSQL (Debian's server, started here in a temporary directory)."""
import os
import ssl
import subprocess
import sys
import threading
import time

from ictl import broker as fleet_broker
from ictl import ROOT, fleetkeys, pki
from ictl.service import db as service_db
from ictl.service import ingest, pgserver, runner, simdev

DEVICES = 40
BURST = 800
ROUNDS = 3


def _fleet(br, n, tag):
    ca = pki.load_ca(br.pki_dir)
    pub = fleetkeys.public_point(fleetkeys.ensure(br.pki_dir))
    devs = [simdev.SimDevice(ca, pub, "bench-%s-%02d" % (tag, i)) for i in range(n)]
    for d in devs:
        d.connect(br.host, br.port, br.ca_path)
        d.publish(d.hello(), retain=True)
    return devs


def _burst(devs, per_device):
    """Seal first (off the clock), then publish from every device at once.
    Returns the wall time the first publish started."""
    msgs = [[d.reading() for _ in range(per_device)] for d in devs]
    start = threading.Barrier(len(devs) + 1)

    def go(d, ms):
        start.wait()
        infos = [d.publish(m, wait=False) for m in ms]
        for i in infos:
            i.wait_for_publish(30)
    ts = [threading.Thread(target=go, args=(d, ms)) for d, ms in zip(devs, msgs)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.monotonic()
    return t0, ts


def _bare_rate(br, devs, total):
    import paho.mqtt.client as mqtt
    kp, cp = pki.ensure_console_cert(pki.load_ca(br.pki_dir))
    got = [0]
    done = threading.Event()
    last = [0.0]

    def on_msg(c, u, m):
        got[0] += 1
        if got[0] >= total:
            last[0] = time.monotonic()
            done.set()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pki.CONSOLE_ID, clean_session=True)
    c.tls_set(ca_certs=br.ca_path, certfile=cp, keyfile=kp, cert_reqs=ssl.CERT_REQUIRED)
    sub = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("%s/+/telemetry" % br.prefix, qos=1)
    c.on_subscribe = lambda *a: sub.set()
    c.on_message = on_msg
    c.connect(br.host, br.port)
    c.loop_start()
    sub.wait(10)
    t0, ts = _burst(devs, total // len(devs))
    ok = done.wait(60)
    for t in ts:
        t.join()
    c.disconnect()
    c.loop_stop()
    if not ok:
        raise RuntimeError("bare subscriber got %d of %d" % (got[0], total))
    return total / (last[0] - t0)


def _ingest_rate(db_url, devs, total):
    db = service_db.connect(db_url)
    before = db.one("SELECT count(*) AS n FROM readings")["n"]
    t0, ts = _burst(devs, total // len(devs))
    end = time.monotonic() + 120
    while time.monotonic() < end:
        n = db.one("SELECT count(*) AS n FROM readings")["n"] - before
        if n >= total:
            break
        time.sleep(0.002)
    t1 = time.monotonic()
    for t in ts:
        t.join()
    db.close()
    if n < total:
        raise RuntimeError("ingest stored %d of %d" % (n, total))
    return total / (t1 - t0)


def _workers(br, db_url, n):
    key = fleetkeys.ensure(br.pki_dir)
    out = []
    for i in range(1, n + 1):
        kp, cp = ingest.worker_credentials(br.pki_dir, i)
        out.append(ingest.Ingest(db_url, key, br.ca_path, br.prefix, br.host, br.port, cp, kp, ingest.worker_id(i),
                                 shared=n > 1, events=i == 1).start())
    return out


def _measure(br, db_url, workers, devs, rounds=None):
    ws = _workers(br, db_url, workers)
    try:
        time.sleep(0.5)     # hellos taken
        return max(_ingest_rate(db_url, devs, BURST) for _ in range(rounds or ROUNDS))
    finally:
        for w in ws:
            w.stop()


def _serve_procs(br, db_url, n):
    """n `ictl serve` ingest-only processes (one worker each, shared)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))
    procs = []
    try:
        for k in range(1, n + 1):
            p = subprocess.Popen([sys.executable, "-m", "ictl", "serve", "--broker", br.state_dir, "--db", db_url,
                                  "--no-web", "--no-rollouts", "--shared", "--first-worker", str(k)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(p)
            line = p.stdout.readline()
            if not line.startswith("serve: 1 ingest worker"):
                raise RuntimeError("ictl serve did not start: %s%s" % (line, p.stdout.read(2000)))
        return procs
    except BaseException:
        _stop_procs(procs)
        raise


def _stop_procs(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stdout.close()


def _measure_procs(br, db_url, n, devs, rounds=None):
    procs = _serve_procs(br, db_url, n)
    try:
        time.sleep(0.5)
        return max(_ingest_rate(db_url, devs, BURST) for _ in range(rounds or ROUNDS))
    finally:
        _stop_procs(procs)


def run(fig, tmp, args):
    with fleet_broker.Broker(os.path.join(tmp, "broker"), die_with_parent=True,
                             operators=fleet_broker.DEFAULT_OPERATORS + runner.operators(2)) as br:
        devs = _fleet(br, DEVICES, "a")
        try:
            url = os.path.join(tmp, "svc.db")
            d = service_db.connect(url)
            d.migrate()
            d.close()
            # rounds interleaved, so that the machine's load drifts over both alike
            bare = one = 0
            for _ in range(ROUNDS):
                bare = max(bare, _bare_rate(br, devs, BURST))
                one = max(one, _measure(br, url, 1, devs, rounds=1))
            fig.add("ingest_rate_ratio", round(one / bare, 3), "ratio",
                    "one ingest worker, SQLite: %.0f sealed readings/s opened, checked, stored / bare paho "
                    "subscriber %.0f msgs/s (QoS 1; %d devices, bursts of %d, best of %d)"
                    % (one, bare, DEVICES, BURST, ROUNDS))
            if not pgserver.available():
                print("  ingest_workers_ratio: skipped (%s)" % pgserver.MISSING)
                return
            with pgserver.PgServer() as pg:
                d = service_db.connect(pg.url)
                d.migrate()
                d.close()
                one = two = 0
                for _ in range(ROUNDS):
                    one = max(one, _measure_procs(br, pg.url, 1, devs, rounds=1))
                    two = max(two, _measure_procs(br, pg.url, 2, devs, rounds=1))
                d = service_db.connect(pg.url)
                version = d.one("SHOW server_version")["server_version"]
                d.close()
            fig.add("ingest_workers_ratio", round(two / one, 3), "ratio",
                    "two ingest processes sharing the subscription / one, PostgreSQL %s: %.0f vs %.0f readings/s "
                    "(%d devices, bursts of %d, best of %d; %d cores shared with broker, publishers and database)"
                    % (version, two, one, DEVICES, BURST, ROUNDS, os.cpu_count()))
        finally:
            for dv in devs:
                dv.close()
