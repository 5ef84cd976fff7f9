# Stand-in for the ESP32 port's `time` on the unix port (firmware/profile/*.json,
# "behaviour"). The unix port counts from 1970 and wraps its ticks at 2**62;
# the board does neither:
#
# * The epoch is 2000 (py/mpconfig.h: MICROPY_EPOCH_IS_1970 is 0 unless a port
#   sets it, and ports/esp32/mpconfigport.h does not). The system clock itself
#   holds seconds since 2000: machine.RTC().datetime() sets it with
#   settimeofday(timeutils_seconds_since_epoch(...)) (ports/esp32/machine_rtc.c),
#   time.time() returns tv_sec (ports/esp32/modtime.c), and so does time_ns()
#   scaled (mp_hal_time_ns in ports/esp32/mphalport.c): both count from 2000.
#   Only mbedTLS is handed tv_sec + 946684800 (ports/esp32/main.c). A board
#   without a backup battery powers up at 2000-01-01 00:00:00.
# * ticks_ms/us/cpu wrap at MICROPY_PY_TIME_TICKS_PERIOD = 2**30
#   (MP_SMALL_INT_POSITIVE_MASK + 1 with 31-bit small ints); ticks_diff is valid
#   to half of that (about 6.2 days for ticks_ms, 9 minutes for ticks_us), and
#   ticks_add refuses a delta of half a period or more (extmod/modtime.c).
#
# ESPSIM_TICKS_MS=N starts ticks_ms (and ticks_us at N*1000, mod 2**30) at N, so
# a test can put the wrap a few seconds ahead. ESPSIM_TICKS_MS=wrap-S starts
# S seconds before the wrap.
import sys

_path = sys.path[:]
sys.path[:] = []  # an empty path imports the built-in module, not this file
import time as _t  # noqa: E402
import os as _os  # noqa: E402

sys.path[:] = _path
del _path

_PERIOD = 1 << 30
_HALF = _PERIOD >> 1
_UNIX_2000 = 946684800


def _start_ms():
    v = _os.getenv("ESPSIM_TICKS_MS")
    if not v:
        return 0
    if v.startswith("wrap-"):
        return _PERIOD - int(v[5:]) * 1000
    return int(v)


_t0_ms = _t.ticks_ms()
_t0_us = _t.ticks_us()
_start = _start_ms()
_skip_ms = 0  # simulated time passed without sleeping (_advance)
# The system clock in microseconds since 2000 minus the host's: power-up at 2000-01-01.
_wall_off_us = -(_t.time_ns() // 1000)


def _advance(ms):
    """Unix port only: let `ms` milliseconds pass at once (ticks and the clock),
    for campaigns that simulate days of agent life."""
    global _skip_ms, _wall_off_us
    _skip_ms += ms
    _wall_off_us += ms * 1000


def _wall_us():
    return _t.time_ns() // 1000 + _wall_off_us


def _set_wall_us(us):
    """settimeofday: machine.RTC().datetime(...) sets the clock time.time() reads."""
    global _wall_off_us
    _wall_off_us = us - _t.time_ns() // 1000


def ticks_ms():
    return (_t.ticks_diff(_t.ticks_ms(), _t0_ms) + _start + _skip_ms) & (_PERIOD - 1)


def ticks_us():
    return (_t.ticks_diff(_t.ticks_us(), _t0_us) + (_start + _skip_ms) * 1000) & (_PERIOD - 1)


def ticks_cpu():
    return ticks_us()


def ticks_diff(end, start):
    return ((end - start + _HALF) & (_PERIOD - 1)) - _HALF


def ticks_add(ticks, delta):
    if not -_HALF < delta < _HALF:
        raise OverflowError("ticks interval overflow")
    return (ticks + delta) & (_PERIOD - 1)


def time():
    return _wall_us() // 1000000


def time_ns():
    return _wall_us() * 1000


def _days(y, m, d):
    # Days from 1970-01-01 (H. Hinnant's days_from_civil), as timeutils does in C.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + doe - 719468


def gmtime(secs=None):
    s = time() if secs is None else int(secs)
    # The unix port's gmtime counts from 1970 (and is not local time).
    return _t.gmtime(s + _UNIX_2000)


localtime = gmtime  # the ESP32 port keeps no time zone: localtime is UTC


def mktime(t):
    if not 8 <= len(t) <= 9:
        raise TypeError("mktime needs a tuple of length 8 or 9")
    y, mo, d, h, mi, s = t[:6]
    # timeutils_mktime normalises out-of-range fields the same way.
    mo -= 1
    y += mo // 12
    mo = mo % 12 + 1
    return _days(y, mo, 1) * 86400 + (d - 1) * 86400 + h * 3600 + mi * 60 + s - _UNIX_2000


sleep = _t.sleep
sleep_ms = _t.sleep_ms
sleep_us = _t.sleep_us
