"""The clock before TLS, against a real UDP time server (tools/ictl/timeserver.py
on 127.0.0.1): the SNTP exchange sets the board's RTC from the server, every
hostile reply is refused with a security event and leaves the clock at the
floor, the timeout bounds the wait, and `ictl provision` stores the time
server and hands the host's time over as the floor."""
import os
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mphelp import ROOT, run_mp
from ictl import ToolError, pki, provision
from ictl.sim import board as vboard
from ictl.sim import device as sim_device
from ictl.sim import wifisim
from ictl.timeserver import REPLIES, TimeServer

WIFI_KEY = "clock test " + os.urandom(4).hex()

pytestmark = pytest.mark.timeout(180)

RELEASED = 1795564800  # ironclad.clock.RELEASED: the floor of a fresh board
POWER_UP = 946684800

# Device side: prints one line per exchange, "R <source> <time> <rtc> <rtc
# offset from the host clock> <stored floor> <event seq> <reason> <outcome> <detail>".
DEVICE = """
import esp32, machine, time
from ironclad import clock
from ironclad import events
events.PATH = %(tmp)r + "/events.bin"
events.SENT_PATH = %(tmp)r + "/events.sent"

def go(port, rtc=%(power_up)d, timeout_ms=2000, fresh=True):
    if fresh:  # as after a reboot: no Kiss-o'-Death quiet period from before
        clock._quiet = None
    clock.set_rtc(rtc)
    seq = events.head()[0]
    t0 = time.ticks_ms()
    src, t = clock.ensure(("127.0.0.1", port) if port else None, timeout_ms=timeout_ms)
    ms = time.ticks_diff(time.ticks_ms(), t0)
    e = events.since(seq)
    e = e[-1] if e else {"seq": 0, "reason": "-", "outcome": "-", "detail": "-"}
    print("R", src, t, clock.now(), machine._offset_s(), clock.stored(), e["seq"], e["reason"],
          e["outcome"], e["detail"].replace(" ", "_") or "-", ms)
"""


class Result:
    def __init__(self, line):
        f = line.split()
        self.source, self.time, self.rtc = f[1], int(f[2]), int(f[3])
        self.offset, self.stored, self.event = float(f[4]), int(f[5]), int(f[6])
        self.reason, self.outcome, self.detail, self.ms = f[7], f[8], f[9], int(f[10])


def on_device(devdir, tmp, calls):
    code = DEVICE % {"tmp": str(tmp), "power_up": POWER_UP} + calls
    r = run_mp(code, devdir)
    assert r.returncode == 0, r.stdout + r.stderr
    return [Result(line) for line in r.stdout.splitlines() if line.startswith("R ")]


@pytest.fixture
def dev(tmp_path):
    d = str(tmp_path / "dev")
    sim_device.create(d)
    return d


def test_exchange_sets_the_clock_from_the_server(dev, tmp_path):
    # The server runs an hour ahead of this host: the board's time is the
    # server's, not something it had anyway.
    with TimeServer(offset=3600) as ts:
        before = time.time()
        first, second = on_device(dev, tmp_path, "go(%d)\ngo(%d)\n" % (ts.port, ts.port))
        after = time.time()
        reqs = list(ts.requests)
    for r in (first, second):
        assert r.source == "ntp" and r.event == 0, vars(r)
        assert before + 3600 - 2 <= r.time <= after + 3600 + 2
        assert abs(r.offset - 3600) < 3  # the RTC stand-in runs an hour ahead of the host clock
        assert r.rtc - r.time in (0, 1) and r.stored == r.time  # the new floor
    # one UDP request per exchange, from this host, a client packet that
    # carries nothing but its random transmit stamp (no clock to leak)
    assert len(reqs) == 2 and all(peer[0] == "127.0.0.1" for peer, _ in reqs)
    a, b = reqs[0][1], reqs[1][1]
    assert len(a) == 48 and a[0] == 0x23 and a[1:40] == bytes(39)
    assert a[40:] != b[40:]


# reply kind -> the reason the board refuses it with
HOSTILE = {
    "wrong_origin": "wrong_origin",
    "stratum0": "kiss_of_death",
    "stratum16": "bad_stratum",
    "leap3": "unsynchronized",
    "below_floor": "below_floor",
    "far_ahead": "too_far_ahead",
    "zero_transmit": "zero_transmit",
    "client_mode": "not_server",
    "version1": "bad_version",
    "truncated": "truncated",
    "wrong_source": "no_reply",  # the kernel drops it: the socket is connected to the server
}


def test_hostile_replies_are_refused_with_an_event(dev, tmp_path):
    assert set(HOSTILE) | {"ok", "kod", "silent"} == set(REPLIES)
    servers = {kind: TimeServer(reply=kind).start() for kind in list(HOSTILE) + ["kod", "ok"]}
    try:
        port = {k: s.port for k, s in servers.items()}
        calls = "".join("go(%d, timeout_ms=600)\n" % port[k] for k in HOSTILE)
        # a clock that already reads above the floor stays where it is
        calls += "go(%d, rtc=%d)\n" % (port["far_ahead"], RELEASED + 5000)
        # Kiss-o'-Death: no time taken, and the board leaves time servers alone
        # for a while: the good server after it is not asked
        calls += "go(%d)\ngo(%d, fresh=False)\n" % (port["kod"], port["ok"])
        results = on_device(dev, tmp_path, calls)
        asked = {k: len(s.requests) for k, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    assert len(results) == len(HOSTILE) + 3
    seqs = []
    for kind, r in zip(HOSTILE, results):
        assert (r.source, r.time) == ("floor", RELEASED), (kind, vars(r))
        assert r.rtc - RELEASED in (0, 1) and r.stored == 0, (kind, vars(r))  # at the floor, nothing learnt
        assert r.reason == HOSTILE[kind] and r.event, (kind, vars(r))
        assert r.outcome == ("failed" if kind == "wrong_source" else "rejected"), (kind, vars(r))
        seqs.append(r.event)
    assert seqs == list(range(1, len(HOSTILE) + 1))  # one event each
    above, kod, after_kod = results[len(HOSTILE):]
    assert above.source == "rtc" and above.rtc - (RELEASED + 5000) in (0, 1) and above.reason == "too_far_ahead"
    assert kod.source == "floor" and kod.reason == "kiss_of_death" and kod.detail == "RATE"
    assert after_kod.source == "floor" and after_kod.event == 0
    assert asked == dict({k: 1 for k in HOSTILE}, far_ahead=2, kod=1, ok=0)


@pytest.mark.parametrize("timeout_ms", [300, 1200])
def test_timeout_bounds_the_wait(dev, tmp_path, timeout_ms):
    with TimeServer(reply="silent") as ts:
        (r,) = on_device(dev, tmp_path, "go(%d, timeout_ms=%d)\n" % (ts.port, timeout_ms))
        assert len(ts.requests) == 1
    assert timeout_ms - 20 <= r.ms <= timeout_ms + 250, r.ms
    assert (r.source, r.time, r.reason, r.outcome) == ("floor", RELEASED, "no_reply", "failed")
    assert r.detail.startswith("127.0.0.1:%d" % ts.port)


def test_no_server_configured_means_floor_only(dev, tmp_path):
    (r,) = on_device(dev, tmp_path, "go(None)\n")
    assert (r.source, r.time, r.event) == ("floor", RELEASED, 0)


def test_ntp_setting_is_checked_on_the_host():
    base = ("127.0.0.1", 8883)
    assert provision.broker_settings(*base)["prefix"] and "ntp" not in provision.broker_settings(*base)
    for good in ("pool.ntp.org", "10.0.0.1:123", "time-1.example.com:10123"):
        assert provision.broker_settings(*base, ntp=good)["ntp"] == good
    for bad in ("", ":123", "ntp host", "host:0", "host:65536", "host:12a", "[::1]:123", "h/x", "h\u00e9", "a" * 254):
        with pytest.raises(ToolError, match="time server"):
            provision.broker_settings(*base, ntp=bad)


def test_board_refuses_a_bad_ntp_setting(dev):
    # The board's own rule (the host's is checked above), for settings that
    # did not come through ictl: identity refuses them as malformed.
    code = """
import json
from ironclad import identity
for good, want in (("pool.ntp.org", ("pool.ntp.org", 123)), ("10.0.0.1:1123", ("10.0.0.1", 1123))):
    assert identity.ntp_server(good) == want
for bad in ("", ":1", "a b", "h:0", "h:70000", "h:x", "::1", "h/x", 5, None, "a" * 254):
    try:
        identity.ntp_server(bad)
        raise AssertionError(bad)
    except ValueError:
        pass
b = {"host": "h", "port": 8883, "hostname": "h", "prefix": "p"}
assert identity._broker(json.dumps(b)) == b
b["ntp"] = "h x"
try:
    identity._broker(json.dumps(b))
    raise AssertionError("accepted")
except identity.NotProvisioned as e:
    assert "malformed" in str(e)
print("OK")
"""
    r = run_mp(code, dev)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stdout + r.stderr


def _ictl(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"), ICTL_WIFI_PASSPHRASE=WIFI_KEY)
    return subprocess.run([sys.executable, "-m", "ictl", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL, cwd=ROOT)


def _exec(b, code):
    r = subprocess.run([provision.MPREMOTE, "connect", b.port, "exec", code], capture_output=True, text=True,
                       timeout=60)
    return r.stdout + r.stderr


def test_provisioning_stores_the_time_server_and_the_floor(tmp_path):
    ca_dir = str(tmp_path / "ca")
    pki.init_ca(ca_dir, dev=True)
    pub = tmp_path / "fleet.pub"
    pub.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    d = str(tmp_path / "dev")
    sim_device.create(d)
    wifisim.simulated_ap(d, key=WIFI_KEY)  # SNTP needs the link up, as on a board
    # heap as tests/host/test_provision.py gives its boards
    with TimeServer(offset=300) as ts, vboard.VirtualBoard(d, heap_kib=192) as b:
        args = ["provision", "--port", b.port, "--ca-dir", ca_dir, "--broker-host", "127.0.0.1", "--broker-port",
                "8883", "--fleet-data-pub", str(pub), "--log", str(tmp_path / "p.jsonl"), "--wifi-ssid", wifisim.DEFAULT_SSID]
        r = _ictl(*args, "--ntp", "127.0.0.1:99999")
        assert r.returncode == 2 and "time server" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert '"provisioned": false' in _exec(b, "from ironclad import provision\nprovision.info()")
        t0 = int(time.time())
        r = _ictl(*args, "--ntp", ts.address)
        t1 = int(time.time())
        assert r.returncode == 0, r.stdout + r.stderr
        # Each exec is a new boot of the board: its RTC starts at 2000 again,
        # the floor is in NVS, the time server in the keystore.
        out = _exec(b, "from ironclad import clock, identity, events\n"
                       "events.PATH = %r\nevents.SENT_PATH = events.PATH + '.sent'\n"
                       "me = identity.load()\nprint('NTP', me.ntp, clock.stored(), clock.now())\n"
                       "from ironclad import net\nnet.radio_on()\nassert net.Station.provisioned(me._ks).up(10000)\n"
                       "print('SET', *clock.ensure(me.ntp))\n" % str(tmp_path / "ev.bin"))
    ntp_line = next(line for line in out.splitlines() if line.startswith("NTP"))
    set_line = next(line for line in out.splitlines() if line.startswith("SET"))
    assert ntp_line.startswith("NTP ('127.0.0.1', %d) " % ts.port), out
    stored, rtc = (int(x) for x in ntp_line.split()[-2:])
    assert t0 <= stored <= t1 and rtc < POWER_UP + 600, out  # the host's time is the floor
    # and then it sets its clock from the server it was given (five minutes
    # ahead of this host, so the time is visibly the server's)
    src, t = set_line.split()[1], int(set_line.split()[2])
    assert src == "ntp" and abs(t - (time.time() + 300)) < 10, out
    assert len(ts.requests) == 1


def test_firmware_trust_module_carries_its_build_time():
    # The build floor a firmware freezes (ironclad.clock.built() reads it).
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ictl import image as app_image

    pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    before = int(time.time())
    src = app_image.trust_module([("k1", pub)], "esp32-sim")
    ns = {}
    exec(src, ns)
    assert before <= ns["BUILT"] <= int(time.time())
