# Stand-in for MicroPython's `machine` module on the unix port: the parts the
# agent uses, with the ESP32 port's names and values. State lives in espsim.
import time
import espsim

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_CAUSES = {"PWRON": PWRON_RESET, "HARD": HARD_RESET, "WDT": WDT_RESET, "SOFT": SOFT_RESET}


def unique_id():
    """The chip's base MAC, 6 bytes, as on an ESP32."""
    return espsim.flash().uid


def reset_cause():
    return _CAUSES.get(espsim.flash().reset_cause, PWRON_RESET)


def reset():
    """Reset now: the process ends (no finally runs) and the next boot is a new one.
    On an ESP32 this is esp_restart(): the next boot's esp_reset_reason() is
    ESP_RST_SW, which mp_machine_reset_cause() maps to HARD_RESET
    (ports/esp32/modmachine.c, v1.28.0)."""
    espsim.reset("HARD")


def idle():
    time.sleep_ms(1)


_UNIX_2000 = 946684800


_days = time._days  # days from 1970-01-01, as the port's timeutils computes them in C


def _offset_s():
    """Unix port only: seconds the board's clock runs ahead of the host's (Unix time),
    to the nearest second. Integer arithmetic: with the ESP32's single-precision
    floats (MICROPY_FLOAT_IMPL_FLOAT, ports/esp32/mpconfigport.h; the 32-bit
    build of docs/unix32.md has them too) a float of 1e8 seconds, a clock set a
    few years ahead, is only good to 8 s."""
    return (time._wall_us() - time._t.time_ns() // 1000 + 500000) // 1000000 + _UNIX_2000


class RTC:
    """The chip's wall clock: the system clock time.time() reads (the stand-in
    `time` keeps it; ports/esp32/machine_rtc.c sets it with settimeofday). A
    board without a backup battery powers up at 2000-01-01 00:00:00 and counts
    on from there; datetime(8-tuple) sets it (year, month, day, weekday, hours,
    minutes, seconds, microseconds; the weekday is ignored), as on the ESP32.

    The unix port cannot set the host's clock: the time set is kept as an
    offset from it (machine._offset_s(), for tests), and mbedTLS's certificate
    checks keep the host clock. A reset ends the process, so the next boot
    starts at 2000-01-01 again (a real ESP32 keeps its RTC across a software
    reset; only a power cut clears it)."""

    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        if dt is None:
            s, us = divmod(time._wall_us(), 1000000)
            y, mo, d, h, mi, sec, wd = time.gmtime(s)[:7]
            return (y, mo, d, wd, h, mi, sec, us)
        if len(dt) != 8:
            raise ValueError("datetime needs an 8-tuple")
        y, mo, d, _, h, mi, sec, us = dt
        time._set_wall_us((((_days(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) - _UNIX_2000) * 1000000) + us)


class WDT:
    """machine.WDT as ports/esp32/machine_wdt.c (MicroPython v1.28.0) makes
    it: the ESP-IDF task watchdog reconfigured to `timeout` ms with
    trigger_panic, the MicroPython task subscribed. id must be 0 (ValueError
    otherwise), timeout > 0 ("WDT timeout too short"); there is no way to
    stop it. WDT() again reconfigures the same watchdog. When a feed is
    missed the panic handler resets the chip and the next boot reads
    WDT_RESET (esp_reset_reason() ESP_RST_TASK_WDT, modmachine.c).

    The unix port has no timer interrupt, and a hung program cannot check a
    deadline itself, so the timer is outside the device process, as the
    watchdog's is outside the CPU's control flow: each feed writes the
    timeout to <device dir>/wdt, and the virtual board's host side
    (tools/ictl/board.py) kills the device process once that file is older
    than the timeout, and records WDT as the reset cause. A feed writes at
    most every timeout/8 ms, so the host may fire up to that much early,
    never late. Without a virtual board (a bare `micropython start.py`)
    nothing fires."""

    _timeout = 0
    _fed = None

    def __new__(cls, id=0, timeout=5000):
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        WDT._timeout = timeout
        WDT._fed = None
        o = object.__new__(cls)
        o.feed()
        return o

    def __init__(self, id=0, timeout=5000):
        pass

    def feed(self):
        now = time.ticks_ms()
        if WDT._fed is not None and time.ticks_diff(now, WDT._fed) < WDT._timeout // 8:
            return
        WDT._fed = now
        import simhost

        with simhost.host().open("wdt", "w") as f:
            f.write("%d\n" % WDT._timeout)


# What the board's machine lacks is not there (firmware/profile/<chip>.surface).
import espboard  # noqa: E402

espboard.honour(globals(), "machine")
