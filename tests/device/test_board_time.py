# Time as the ESP32 port keeps it (firmware/profile/*.json, "behaviour"; the
# `time` stand-in, firmware/unix/time.py): the 2000 epoch and ticks that wrap
# at 2**30, with the clock's floor timer, the event log and the spool across
# the wrap. MQTT timers across the wrap: test_mqtt.py.
import os
import time

import esp32
import machine

from ironclad import clock, events
from ironclad.spool import Spool

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"
PERIOD = 1 << 30
UNIX_2000 = 946684800
# The stand-ins and the library compiled from source: 96 KiB is too tight.
HEAP_KIB = 160  # passed at 112 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts


def _near_wrap(ms_before):
    time._advance((PERIOD - ms_before - time.ticks_ms()) % PERIOD)


def test_ticks_wrap_at_2_to_the_30():
    _near_wrap(2000)
    t0 = time.ticks_ms()
    assert PERIOD - 2100 < t0 < PERIOD
    time._advance(3000)
    t1 = time.ticks_ms()
    assert t1 < 2000 and 2990 <= time.ticks_diff(t1, t0) <= 3100, (t0, t1)
    assert time.ticks_diff(t0, t1) < 0
    assert time.ticks_add(PERIOD - 1, 1) == 0 and time.ticks_add(0, -1) == PERIOD - 1
    assert 0 <= time.ticks_us() < PERIOD and 0 <= time.ticks_cpu() < PERIOD
    # ticks_diff is valid to half the period; ticks_add refuses more
    assert time.ticks_diff(time.ticks_add(t0, PERIOD // 2 - 1), t0) == PERIOD // 2 - 1
    for bad in (PERIOD // 2, -PERIOD // 2):
        try:
            time.ticks_add(t0, bad)
        except OverflowError:
            continue
        raise AssertionError("ticks_add took %d" % bad)


def test_epoch_is_2000_and_time_follows_the_rtc():
    assert time.gmtime(0)[:6] == (2000, 1, 1, 0, 0, 0)
    assert 0 <= time.time() < 60  # powered up at 2000-01-01 a moment ago
    assert time.localtime(86400 * 366)[:3] == (2001, 1, 1)
    for t in (0, 951782400 - UNIX_2000, 2147483648 - UNIX_2000, 4102444800 - UNIX_2000):
        assert time.mktime(time.gmtime(t)) == t, t
    machine.RTC().datetime((2026, 12, 1, 0, 12, 0, 0, 0))
    assert abs(time.time() - (1796083200 + 12 * 3600 - UNIX_2000)) < 2, time.time()
    assert time.time_ns() // 1000000000 == time.time() or time.time_ns() // 1000000000 == time.time() - 1
    assert events._wall() - 1796083200 - 12 * 3600 in (0, 1)  # Unix seconds, from the 2000 clock


def test_clock_floor_timer_across_the_wrap():
    machine.RTC().datetime((2026, 12, 1, 0, 0, 0, 0, 0))
    _near_wrap(10000)
    clock.remember()
    s0 = clock.stored()
    assert s0 >= 1796083200
    time._advance(20000)  # across the wrap, 20 s on: not due yet
    clock.remember()
    assert clock.stored() == s0
    time._advance(clock.SAVE_EVERY_S * 1000)
    clock.remember()
    assert clock.stored() >= s0 + clock.SAVE_EVERY_S


def test_events_across_the_wrap():
    machine.RTC().datetime((2026, 12, 1, 0, 0, 0, 0, 0))
    _near_wrap(500)
    events.record("boot", "before_wrap", "info")
    time._advance(1000)
    events.record("boot", "after_wrap", "info")
    got = events.since(0)
    assert [e["reason"] for e in got[-2:]] == ["before_wrap", "after_wrap"], got
    a, b = got[-2]["ms"], got[-1]["ms"]
    assert a > PERIOD - 600 and b < 600 and time.ticks_diff(b, a) >= 1000, (a, b)
    assert got[-1]["wall"] >= 1796083200


def test_spool_stamps_unix_time_and_expires_across_the_wrap():
    machine.RTC().datetime((2026, 12, 1, 0, 0, 0, 0, 0))
    _near_wrap(500)
    sp = Spool(D + "/spool", max_age_s=3600)
    sp.put(b"old")
    time._advance(1800 * 1000)  # across the wrap, half an hour
    sp.put(b"new")
    assert len(sp) == 2
    time._advance(2000 * 1000)  # the first is now older than an hour
    sent = []
    sp.flush(lambda m: sent.append(bytes(m)))
    assert sent == [b"new"], sent
