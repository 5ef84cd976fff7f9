# The clock before TLS (ironclad.clock): the RTC stand-in, the floor (build
# time, NVS, signed data, provisioning), SNTP reply checks, and what ensure()
# does when no server answers. The real UDP exchange with a time server,
# hostile replies included, is tests/host/test_clock.py.
import os
import socket
import struct
import sys
import time

import esp32
import machine

from ironclad import clock
from ironclad import events

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"

YEAR = 365 * 86400
NTP_UNIX = 2208988800
POWER_UP = 946684800  # 2000-01-01, what an ESP32's RTC says after power-up
# The stand-ins (esp32, machine, time) as the port profile has them, and this
# file, compiled from source: 96 KiB leaves too few large blocks.
HEAP_KIB = 160  # passed at 112 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts


def _last_event():
    h = events.head()[0]
    return events.since(h - 1)[-1] if h else None


def _reply(nonce, t, first=0x24, stratum=2, refid=b"GPS\x00", origin=None, transmit=None, n=48):
    # A server's reply as RFC 4330 lays it out: t is the server's Unix time.
    secs = (int(t) + NTP_UNIX) & 0xFFFFFFFF
    stamp = struct.pack(">II", secs, 0)
    pkt = (bytes([first, stratum, 6, 0xEC]) + bytes(8) + refid + stamp + (nonce if origin is None else origin)
           + stamp + (stamp if transmit is None else transmit))
    return pkt[:n]


def test_rtc_powers_up_at_2000_and_keeps_what_is_set():
    rtc = machine.RTC()
    dt = rtc.datetime()
    assert dt[:7] == (2000, 1, 1, 5, 0, 0, 0), dt  # a Saturday; seconds since "power-up"
    rtc.datetime((2030, 6, 15, 0, 12, 34, 56, 0))  # the weekday given is ignored, as on the chip
    y, mo, d, wd, h, mi, s, us = rtc.datetime()
    assert (y, mo, d, wd, h, mi) == (2030, 6, 15, 5, 12, 34) and s in (56, 57), rtc.datetime()
    # time.time() reads the same clock, counting from 2000 as on the board
    # (ports/esp32/modtime.c); the host clock is untouched: the stand-in keeps
    # the offset from it
    want = clock._days(2030, 6, 15) * 86400 + 12 * 3600 + 34 * 60 + 56
    assert abs(time.time() + 946684800 - want) < 2, (time.time(), want)
    assert time.gmtime(0)[:3] == (2000, 1, 1)
    assert abs(machine._offset_s() - (want - time._t.time())) < 2, machine._offset_s()
    time.sleep_ms(1100)
    assert rtc.datetime()[6] in (57, 58)  # it runs
    try:
        rtc.datetime((2030, 6, 15))
        raise AssertionError("a short tuple was accepted")
    except ValueError:
        pass


def test_seconds_and_dates_agree_with_gmtime():
    # the board's epoch (2000), a leap day, the 32-bit signed and NTP-era
    # edges, the u32 end; time.gmtime counts from 2000 as on the board
    for t in (POWER_UP, 951782400, 2147483647, 2147483648, 2085978495, 2085978496, 4102444800, 4294967295):
        clock.set_rtc(t)
        assert clock.now() == t or clock.now() == t + 1, (t, clock.now())
        g = time.gmtime(t - POWER_UP)
        assert machine.RTC().datetime()[:3] == g[:3], (t, machine.RTC().datetime(), g)


def test_unset_clock_goes_to_the_floor():
    assert clock.built() == clock.RELEASED and clock.stored() == 0
    assert clock.floor() == clock.RELEASED
    assert clock.now() < POWER_UP + 60
    assert clock.ensure() == ("floor", clock.RELEASED)
    assert clock.now() - clock.RELEASED in (0, 1)
    # a clock that reads above the floor is left alone
    clock.set_rtc(clock.RELEASED + 5000)
    src, t = clock.ensure()
    assert src == "rtc" and t - (clock.RELEASED + 5000) in (0, 1)
    assert clock.now() - (clock.RELEASED + 5000) in (0, 1)
    # signed data the device has seen raises the floor
    assert clock.ensure(None, clock.RELEASED + 9000) == ("floor", clock.RELEASED + 9000)
    assert events.head()[0] == 0  # nothing here is an event


def test_floor_is_stored_in_nvs_and_survives():
    clock._store(clock.RELEASED + 7 * 86400)
    assert clock.stored() == clock.RELEASED + 7 * 86400
    assert esp32.NVS(clock.NVS_NS).get_i32("floor") == clock.RELEASED + 7 * 86400
    assert clock.ensure() == ("floor", clock.RELEASED + 7 * 86400)
    # Beyond 2038 the u32 kept in an i32 still reads back.
    clock._store(2 ** 31 + 5)
    assert esp32.NVS(clock.NVS_NS).get_i32("floor") < 0 and clock.stored() == 2 ** 31 + 5
    assert clock.floor() == 2 ** 31 + 5


def test_a_later_trusted_time_moves_clock_and_floor_up_only():
    # Issue 14 item 7: no time server reachable, the clock at the floor.
    assert clock.ensure() == ("floor", clock.RELEASED)
    t = clock.RELEASED + 9 * 86400
    assert clock.advance(t) and clock.source == "signed"
    assert clock.now() - t in (0, 1) and clock.stored() == t  # clock and floor
    assert not clock.advance(t - 3600)  # never backwards
    assert clock.now() - t in (0, 1) and clock.stored() == t
    assert not clock.advance(clock.floor() + clock.MAX_AHEAD_S + 1)  # not absurdly far
    assert not clock.advance("soon") and not clock.advance(None)
    clock.source = "ntp"  # a time server answered this boot: its time stands
    assert not clock.advance(t + 3600)
    assert clock.now() - t in (0, 1)


def test_remember_writes_at_most_every_few_minutes():
    clock.set_rtc(clock.RELEASED + 100)
    clock.remember()
    assert clock.stored() - (clock.RELEASED + 100) in (0, 1)
    clock.set_rtc(clock.RELEASED + 1000)
    clock.remember()  # too soon: no flash write
    assert clock.stored() - (clock.RELEASED + 100) in (0, 1)
    # ... until SAVE_EVERY_S has passed
    clock._due = time.ticks_add(time.ticks_ms(), -1)
    clock.remember()
    assert clock.stored() - (clock.RELEASED + 1000) in (0, 1)
    # and never lowers the stored floor
    clock.set_rtc(clock.RELEASED)
    clock._due = time.ticks_add(time.ticks_ms(), -1)
    clock.remember()
    assert clock.stored() - (clock.RELEASED + 1000) in (0, 1)
    assert clock.SAVE_EVERY_S >= 60


def test_build_time_from_the_firmware():
    with open(D + "/ironclad_trust.py", "w") as f:
        f.write("BUILT = %d\n" % (clock.RELEASED + 12345))
    sys.path.insert(0, D)
    try:
        assert clock.built() == clock.RELEASED + 12345
        assert clock.ensure() == ("floor", clock.RELEASED + 12345)
        # an older stamp never lowers the release date
        del sys.modules["ironclad_trust"]
        with open(D + "/ironclad_trust.py", "w") as f:
            f.write("BUILT = 1000\n")
        assert clock.built() == clock.RELEASED
    finally:
        sys.path.remove(D)


def test_provisioning_sets_clock_and_floor():
    t = clock.RELEASED + 400 * 86400
    clock.provisioned(t)
    assert clock.stored() == t and clock.now() - t in (0, 1)
    # the technician's host is trusted to replace a floor pushed too far forward
    clock._store(t + 10 * YEAR)
    clock.provisioned(t)
    assert clock.stored() == t
    for bad in (clock.RELEASED - 1, 0, -5, clock.RELEASED + 21 * 366 * 86400, "1795564800", 1.8e9, None):
        clock.set_rtc(POWER_UP)
        try:
            clock.provisioned(bad)
            raise AssertionError("accepted %r" % (bad,))
        except ValueError as e:
            assert "host's clock" in str(e)
        assert clock.stored() == t and clock.now() < POWER_UP + 60  # nothing changed


def test_request_carries_a_random_transmit_stamp():
    a, na = clock.request()
    b, nb = clock.request()
    assert len(a) == 48 and a[0] == 0x23  # LI 0, version 4, client
    assert a[40:] == na and b[40:] == nb and na != nb
    assert bytes(a[1:40]) == bytes(39)


def test_parse_good_reply():
    pkt, nonce = clock.request()
    low = clock.RELEASED
    t = clock.RELEASED + 86400
    assert clock.parse(_reply(nonce, t), nonce, 0, low) == t
    # half the round trip is added
    assert clock.parse(_reply(nonce, t), nonce, 3000, low) == t + 2
    # version 3 servers, and extension/MAC bytes after the 48
    assert clock.parse(_reply(nonce, t, first=0x1C), nonce, 0, low) == t
    assert clock.parse(_reply(nonce, t) + bytes(20), nonce, 0, low) == t
    # after the NTP era wraps (2036-02-07), and a floor up there too
    t2 = 2085978496 + 1000
    assert clock.parse(_reply(nonce, t2), nonce, 0, low) == t2
    assert clock.parse(_reply(nonce, t2), nonce, 0, t2 - 5) == t2
    # the leap warning bits 1 and 2 are fine
    assert clock.parse(_reply(nonce, t, first=0x64), nonce, 0, low) == t


BAD = (
    # (reason, reply builder)
    ("truncated", lambda n, t: _reply(n, t, n=40)),
    ("truncated", lambda n, t: b""),
    ("not_server", lambda n, t: _reply(n, t, first=0x23)),  # a client's packet reflected
    ("not_server", lambda n, t: _reply(n, t, first=0x25)),  # broadcast
    ("wrong_origin", lambda n, t: _reply(n, t, origin=bytes(8))),
    ("wrong_origin", lambda n, t: _reply(n, t, origin=n[:7] + b"\x00")),
    # a Kiss-o'-Death without the echo is just a forgery
    ("wrong_origin", lambda n, t: _reply(n, t, stratum=0, refid=b"DENY", origin=os.urandom(8))),
    ("bad_version", lambda n, t: _reply(n, t, first=0x0C)),
    ("bad_version", lambda n, t: _reply(n, t, first=0x3C)),
    ("kiss_of_death", lambda n, t: _reply(n, t, stratum=0, refid=b"RATE")),
    ("kiss_of_death", lambda n, t: _reply(n, t, stratum=0, refid=bytes(4))),
    ("bad_stratum", lambda n, t: _reply(n, t, stratum=16)),
    ("bad_stratum", lambda n, t: _reply(n, t, stratum=255)),
    ("unsynchronized", lambda n, t: _reply(n, t, first=0xE4)),
    ("zero_transmit", lambda n, t: _reply(n, t, transmit=bytes(8))),
    ("below_floor", lambda n, t: _reply(n, t - 10 * YEAR)),
    ("below_floor", lambda n, t: _reply(n, clock.RELEASED - 1)),
    ("too_far_ahead", lambda n, t: _reply(n, t + 30 * YEAR)),
)


def test_parse_refuses_every_bad_reply():
    _, nonce = clock.request()
    t = clock.RELEASED + 86400
    for i, (reason, build) in enumerate(BAD):
        try:
            clock.parse(build(nonce, t), nonce, 0, clock.RELEASED)
            raise AssertionError("case %d accepted" % i)
        except clock.Rejected as e:
            assert e.reason == reason, (i, reason, e.reason)
    try:
        clock.parse(_reply(nonce, t, stratum=0, refid=b"DENY"), nonce, 0, clock.RELEASED)
        raise AssertionError("Kiss-o'-Death accepted")
    except clock.Rejected as e:
        assert e.detail == "DENY", e.detail  # the kiss code goes into the event
    print("REPORT: %d hostile SNTP replies refused" % len(BAD))


def test_no_reply_times_out_at_the_floor_with_an_event():
    # A server that never answers: bound here (the first free port; the
    # port has no getsockname), so the request lands and nothing comes back.
    port = None
    for p in range(47123, 47323):
        s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s2.bind(socket.getaddrinfo("127.0.0.1", p)[0][-1])
            port = p
            break
        except OSError:
            s2.close()
    assert port
    t0 = time.ticks_ms()
    assert clock.ensure(("127.0.0.1", port), timeout_ms=400) == ("floor", clock.RELEASED)
    waited = time.ticks_diff(time.ticks_ms(), t0)
    assert 380 <= waited < 1400, waited
    assert s2.recv(100)[0] == 0x23  # the request did go out
    s2.close()
    e = _last_event()
    assert e["kind"] == "clock" and e["reason"] == "no_reply" and e["outcome"] == "failed", e
    assert ("127.0.0.1:%d" % port) in e["detail"]
    assert clock.now() - clock.RELEASED in (0, 1)
    assert clock.stored() == 0  # nothing learnt, nothing stored


def test_resync_records_the_first_sync_and_big_steps_and_keeps_a_synced_clock():
    # The agent's later syncs (clock.resync: the link came up, or RESYNC_MS
    # passed). The exchange itself is tests/host/test_clock.py's and
    # test_wifi.py's (a real server): here the server's answers are given.
    answers = []

    def query(host, port, low, timeout_ms=clock.TIMEOUT_MS):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    real = clock.query
    clock.query = query
    try:
        assert clock.ensure(None) == ("floor", clock.RELEASED) and not clock.synced()
        n = events.head()[0]
        t1 = clock.RELEASED + 40 * 86400
        answers.append(t1)
        assert clock.resync(("time.example", 123)) == ("ntp", t1) and clock.synced()
        e = _last_event()
        assert e["seq"] == n + 1 and (e["kind"], e["reason"], e["outcome"]) == ("clock", "synced", "ok"), e
        assert e["detail"] == "first +%d s" % (40 * 86400), e  # the board ran from its floor until now
        # A few seconds of drift: no event. An hour: one.
        answers.append(clock.now() + 5)
        assert clock.resync(("time.example", 123))[0] == "ntp" and events.head()[0] == n + 1
        # (query() refuses a time below the floor: a server only moves it up.)
        answers.append(clock.now() + 3600)
        assert clock.resync(("time.example", 123))[0] == "ntp"
        e = _last_event()
        assert e["seq"] == n + 2 and e["reason"] == "synced" and e["detail"].startswith("step +360"), e
        # A later exchange that fails: recorded, and the clock, set from the
        # server this boot, is still synced (commands keep the tight skew).
        answers.append(OSError(110))
        assert clock.resync(("time.example", 123))[0] == "rtc"
        e = _last_event()
        assert e["reason"] == "no_reply" and e["outcome"] == "failed", e
        assert clock.synced()
    finally:
        clock.query = real
    # RESYNC_MS and RETRY_MS lie well inside the span ticks_diff compares
    # exactly (ticks wrap at 2**30 ms on a board: 2**29 either way).
    assert 0 < clock.RETRY_MS < clock.RESYNC_MS < 1 << 29
    due = time.ticks_add((1 << 30) - 1000, clock.RESYNC_MS)  # across the wrap
    assert time.ticks_diff(due, (1 << 30) - 1000) == clock.RESYNC_MS
