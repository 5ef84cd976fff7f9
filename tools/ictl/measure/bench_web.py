"""Web console figure (issue 16): overview_p95_ratio = p95 latency of the
fleet overview page (signed in, HTTPS, the real server) with 1,000 devices
and 1,000,000 stored readings ÷ p95 of the static health route on the same
server, connection and run (requests interleaved, so load on the machine
hits both alike). Goal <= 5.

The store is seeded with SQL in one transaction (devices, readings spread
over the last 24 hours, a few open alarms): the figure is about reading the
overview out of a large store, not about ingest (ingest_rate_ratio is)."""
import json
import math
import os
import random
import shutil
import tempfile
import time

DEVICES = 1000
READINGS = 1000000
REQUESTS = 300


def seed(db, devices=DEVICES, readings=READINGS, now=None):
    """devices + readings (+ an open alarm on every 20th device)."""
    from ictl.service import alarms
    now = time.time() if now is None else now
    rng = random.Random(16)
    per = readings // devices
    with db.transaction():
        for d in range(devices):
            did = "dev-%04d" % d
            db.execute("INSERT INTO devices (device_id, online, app_version, first_seen, last_seen, key_epoch)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       (did, d % 7 != 0, "1.%d.0" % (d % 3), now - 86400, now - rng.random() * 600, "%016x" % d))
            if d % 20 == 0:
                alarms.raise_alarm(db, did, "chain_gap", "events 4..6 missing", source="bench-%d" % d, now=now - 60)
    rows = ((("dev-%04d" % (i % devices)), "k%04d" % (i % devices), i // devices, i // devices,
             now - 86400 + (i // devices) * 86400.0 / per, now - 86400 + (i // devices) * 86400.0 / per,
             json.dumps({"temp_c": round(20 + 5 * math.sin(i / 500.0), 2), "uptime_ms": i}))
            for i in range(per * devices))
    sql = ("INSERT INTO readings (device_id, key_id, counter, seq, device_ts, received_at, data)"
           " VALUES (?, ?, ?, ?, ?, ?, ?)")
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == 20000:
            _bulk(db, sql, batch)
            batch = []
    if batch:
        _bulk(db, sql, batch)
    return per * devices


def _bulk(db, sql, rows):
    with db.transaction():
        for r in rows:
            db.execute(sql, r)


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(0.95 * len(xs))) - 1)]


def measure(rig, session, n=REQUESTS):
    """(p95 overview s, p95 health s, medians) over n interleaved requests each."""
    page, health = [], []
    for path in ("/", "/healthz"):              # warm up both
        r = session.get(rig.url + path, timeout=60)
        if path == "/" and "dev-0000" not in r.text:
            raise RuntimeError("the overview does not list the seeded devices")
    for _ in range(n):
        for path, out in (("/", page), ("/healthz", health)):
            t = time.perf_counter()
            r = session.get(rig.url + path, timeout=60, allow_redirects=False)
            out.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError("%s answered %s" % (path, r.status_code))
    return p95(page), p95(health), sorted(page)[len(page) // 2], sorted(health)[len(health) // 2]


def run(fig, tmp, args):
    from ictl.service.web import accounts
    from ictl.service.web.testrig import Rig
    readings = getattr(args, "web_readings", READINGS) or READINGS
    tmp = tempfile.mkdtemp(prefix="web-", dir=tmp)
    rig = Rig(tmp)
    try:
        t0 = time.time()
        stored = seed(rig.db, DEVICES, readings)
        seeded = time.time() - t0
        rig.enrol(accounts.init_setup_token(rig.db))
        name = rig.user("bench-viewer", "viewer")
        s = rig.signed_in(name)
        page, health, mpage, mhealth = measure(rig, s)
        size = os.path.getsize(rig.db_url) / 2.0 ** 20
        fig.add("overview_p95_ratio", round(page / health, 2), "ratio",
                "p95 of GET / (fleet overview, signed in, HTTPS) %.1f ms / p95 of GET /healthz %.1f ms "
                "(medians %.1f / %.1f ms), %d requests each interleaved; %d devices, %d readings "
                "(SQLite %.0f MiB, seeded in %.0f s)" % (page * 1e3, health * 1e3, mpage * 1e3, mhealth * 1e3,
                                                          REQUESTS, DEVICES, stored, size, seeded))
        return 0
    finally:
        rig.stop()
        shutil.rmtree(tmp, ignore_errors=True)
