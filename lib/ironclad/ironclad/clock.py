# Wall time before TLS. An ESP32 has no battery-backed clock: after power-up
# its RTC says 2000-01-01, and mbedTLS checks the broker certificate's validity
# period against that clock, so a board that never sets it refuses every
# broker as "not yet valid". The agent calls, before its first connection:
#
#   from ironclad import clock
#   source, t = clock.ensure(me.ntp, signed)   # me.ntp: (host, port) or None;
#                                              # signed: newest time seen in
#                                              # signed update metadata
#   ...
#   clock.remember()                           # in the main loop
#   clock.resync(me.ntp, signed, timeout_ms)   # when the link comes up, and
#                                              # every RESYNC_MS while it is
#
# A board that booted with no link set its clock to the floor; the agent
# syncs it once the link is up (a late start or after a drop), and again
# every few hours (RESYNC_MS) under the same rules; a sync that sets a clock
# not synced before, or moves it by more than STEP_EVENT_S, is recorded.
#
# The floor: the clock is never set below max(the firmware's build time, the
# last known good time stored in NVS (remember(), provisioning), the newest
# time seen in signed data). A board whose clock reads below it is set to it.
#
# SNTP (RFC 4330 / RFC 5905 client mode), when the broker settings name a time
# server: one UDP exchange with that server only, with a timeout. The request
# carries 8 random bytes as its transmit timestamp and the reply must echo
# them as its originate timestamp, so only someone who sees the request can
# answer it. The reply must be a server's (mode 4, version 3 or 4), from a
# synchronised source (stratum 1-15, leap indicator not 3), with a transmit
# time, and the time must lie between the floor and 20 years above it. A
# refused reply is a security event and the clock stays at the floor.
#
# What unauthenticated NTP leaves open (docs/brokers.md, "Clock"): an attacker
# on the path can move the clock forward (at most 20 years past the floor),
# which the device then remembers: broker certificates look expired, a denial
# of service. It can never move the clock below the floor, so it cannot make
# an expired certificate valid again.
import struct
import time
from micropython import const

import machine

from ironclad import mono, rng
from ironclad import nvs as _nvs

NTP_PORT = const(123)
TIMEOUT_MS = const(2000)
SAVE_EVERY_S = const(300)  # NVS writes of the floor: at most one per 5 minutes (flash wear)
KOD_QUIET_MS = const(3_600_000)  # after a Kiss-o'-Death the server is not asked again for an hour
MAX_AHEAD_S = 20 * 366 * 86400  # a server time further above the floor is refused
# The agent's later syncs: every 4 hours while the link is up, every 5
# minutes while no server has answered this boot. Both are far below the
# 2**29 ms (6.2 days) within which time.ticks_diff of two tick values is
# exact: ticks wrap at 2**30 ms on a board.
RESYNC_MS = const(4 * 3600 * 1000)
RETRY_MS = const(300 * 1000)
STEP_EVENT_S = const(60)  # a synced clock moved by more than this is an event
# This code's release date (2026-11-25 00:00 UTC): no board runs it earlier.
# The firmware build raises it with BUILT in its frozen ironclad_trust module.
RELEASED = 1795564800
NVS_NS = "ic_clock"

_KEY = "floor"  # u32 Unix seconds (good until 2106), stored as NVS i32
_NTP_UNIX = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_UNIX_2000 = 946684800
_PACKET = const(48)
_MAX_REPLY = const(68)  # 48 + key id + MD5/SHA-1 MAC: more is cut off by recv

_due = None  # ticks_ms when remember() next writes
source = None  # where the clock was last set from: "ntp", "floor", "rtc", "signed" (ensure, advance)
_quiet = None  # ticks_ms until which a Kiss-o'-Death server is left alone


class Rejected(Exception):
    """A time server's reply failed a check; reason is the event's reason code."""

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# --- the floor ----------------------------------------------------------------


def built():
    """The firmware's build time: the newer of RELEASED and the BUILT stamp
    a firmware build puts into the frozen ironclad_trust module."""
    try:
        import ironclad_trust

        return max(RELEASED, getattr(ironclad_trust, "BUILT", 0))
    except ImportError:
        return RELEASED


def stored():
    """The last known good time kept in NVS and in its copy outside NVS
    (ironclad.mono: an NVS partition written back from an old dump does not
    move it back); 0 if none."""
    try:
        t = _nvs.open(NVS_NS).get_i32(_KEY) & 0xFFFFFFFF
    except OSError:
        t = 0
    return max(t, mono.get("clock"))


def _store(t, force=False):
    nvs = _nvs.open(NVS_NS)
    nvs.set_i32(_KEY, t - (1 << 32) if t >= 1 << 31 else t)
    nvs.commit()
    mono.put("clock", t, force)


def floor(signed=0):
    """No clock reading below this can be right."""
    return max(built(), stored(), signed)


def remember():
    """Keep the clock's time as the new floor, at most every SAVE_EVERY_S.
    Call it from the main loop: a board that never reaches a time server
    still moves its floor on by the time it has run."""
    global _due
    ms = time.ticks_ms()
    if _due is not None and time.ticks_diff(_due, ms) > 0:
        return
    _due = time.ticks_add(ms, SAVE_EVERY_S * 1000)
    t = now()
    if t > stored():
        _store(t)


def provisioned(t):
    """The technician's host hands over its time at provisioning: the clock
    is set to it and it becomes the stored floor (replacing one an attacker
    may have pushed forward). ValueError if t is below the build time or
    absurdly far above it (the host's clock is wrong)."""
    b = built()
    if not isinstance(t, int) or t < b or t > b + MAX_AHEAD_S:
        raise ValueError("host time %r is not between this firmware's build time %d and 20 years later: "
                         "check the host's clock" % (t, b))
    set_rtc(t)
    _store(t, force=True)


def synced():
    """True once a time server answered this boot: only then is the clock
    precise enough to judge a command's time to the minute."""
    return source == "ntp"


def advance(t):
    """A later trusted time (the iat of verified update metadata, of an
    authenticated command): the clock and the floor move up to it, never
    down, and never more than MAX_AHEAD_S above the floor. Returns True if
    the clock moved. The rule, and why a broker certificate's notBefore is
    not one: docs/brokers.md, "Clock"."""
    global source, _due
    if synced() or not isinstance(t, int):
        return False  # (a time server's answer this boot is the better source)
    low = floor()
    if t <= now() or t <= low or t > low + MAX_AHEAD_S:
        return False  # (below the floor: ensure() raises the clock to the floor itself)
    set_rtc(t)
    _store(t)
    _due = time.ticks_add(time.ticks_ms(), SAVE_EVERY_S * 1000)
    source = "signed"
    return True


# --- the RTC ------------------------------------------------------------------


def _days(y, m, d):
    # Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
    # days_from_civil): time.mktime is local time on the unix port.
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + doe - 719468


def now():
    """The RTC's time, Unix seconds."""
    y, mo, d, _, h, mi, s, _ = machine.RTC().datetime()
    return _days(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def set_rtc(t):
    """Set the RTC to Unix time t (seconds)."""
    # time.gmtime counts from the port's epoch: 1970, or 2000 on older ports.
    y, mo, d, h, mi, s, wd = time.gmtime(t - (_UNIX_2000 if time.gmtime(0)[0] == 2000 else 0))[:7]
    machine.RTC().datetime((y, mo, d, wd, h, mi, s, 0))


# --- SNTP ---------------------------------------------------------------------


def request():
    """(packet, the 8 random bytes the reply must echo)."""
    nonce = rng.get(8)
    pkt = bytearray(_PACKET)
    pkt[0] = 0x23  # leap indicator 0, version 4, mode 3 (client)
    pkt[40:48] = nonce  # transmit timestamp: random, not our (unknown) time
    return pkt, nonce


def parse(reply, nonce, rtt_ms, low):
    """The server's time (Unix seconds, half the round trip added) from a
    reply to the request that carried nonce; Rejected if any check fails.
    low is the floor the time must not be below."""
    if len(reply) < _PACKET:
        raise Rejected("truncated", "%d bytes" % len(reply))
    b0 = reply[0]
    if b0 & 7 != 4:
        raise Rejected("not_server", "mode %d" % (b0 & 7))
    # Before anything the reply says is believed, not even a Kiss-o'-Death:
    # without the echo, anyone could send it.
    if reply[24:32] != nonce:
        raise Rejected("wrong_origin")
    if (b0 >> 3) & 7 not in (3, 4):
        raise Rejected("bad_version", "version %d" % ((b0 >> 3) & 7))
    stratum = reply[1]
    if stratum == 0:
        code = bytes(c if 32 <= c < 127 else 63 for c in reply[12:16]).decode()
        raise Rejected("kiss_of_death", code)
    if stratum > 15:
        raise Rejected("bad_stratum", "stratum %d" % stratum)
    if b0 >> 6 == 3:
        raise Rejected("unsynchronized")
    secs, frac = struct.unpack_from(">II", reply, 40)
    if not (secs or frac):
        raise Rejected("zero_transmit")
    # 32-bit NTP seconds wrap in 2036: a value with the top bit clear is in
    # era 1 (RFC 4330 section 3), which covers 1968-2104.
    if not secs & 0x80000000:
        secs += 1 << 32
    t = secs - _NTP_UNIX + (((frac * 1000) >> 32) + rtt_ms // 2 + 500) // 1000
    if t < low:
        raise Rejected("below_floor", "%d < %d" % (t, low))
    if t > low + MAX_AHEAD_S:
        raise Rejected("too_far_ahead", "%d" % t)
    return t


def query(host, port, low, timeout_ms=TIMEOUT_MS):
    """One SNTP exchange with host:port; the checked time (parse()).
    OSError when no reply came within timeout_ms (or the host does not resolve)."""
    import socket

    family, kind, proto, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    s = socket.socket(family, kind, proto)
    try:
        s.settimeout(timeout_ms / 1000)
        s.connect(addr)  # datagrams from any other address are not ours
        pkt, nonce = request()
        t0 = time.ticks_ms()
        s.send(pkt)
        reply = s.recv(_MAX_REPLY)
        rtt = time.ticks_diff(time.ticks_ms(), t0)
    finally:
        s.close()
    return parse(reply, nonce, rtt, low)


def ensure(server=None, signed=0, timeout_ms=TIMEOUT_MS):
    """Set the clock before TLS. server: (host, port) of the time server, or
    None for the floor only; signed: the newest time seen in signed data.
    Returns (source, Unix time): "ntp" (the server's checked time), "floor"
    (the clock read below the floor and was raised to it) or "rtc" (it
    already read at or above the floor and no server answered acceptably)."""
    global _quiet, _due, source
    from ironclad import events

    low = floor(signed)
    if _quiet is not None and time.ticks_diff(_quiet, time.ticks_ms()) <= 0:
        _quiet = None
    if server and _quiet is None:
        where = "%s:%d" % server
        try:
            t = query(server[0], server[1], low, timeout_ms)
        except Rejected as e:
            if e.reason == "kiss_of_death":
                _quiet = time.ticks_add(time.ticks_ms(), KOD_QUIET_MS)
            events.record("clock", e.reason, "rejected", e.detail or where)
        except OSError as e:
            events.record("clock", "no_reply", "failed", "%s errno %s" % (where, e.args[0] if e.args else "?"))
        else:
            set_rtc(t)
            _store(t)
            _due = time.ticks_add(time.ticks_ms(), SAVE_EVERY_S * 1000)
            source = "ntp"
            return "ntp", t
    t = now()
    if t < low:
        set_rtc(low)
        source = "floor"
        return "floor", low
    if source != "ntp":
        # (A clock a server set earlier this boot has run on since: still
        # synced when a later exchange fails.)
        source = "rtc"
    return "rtc", t


def resync(server, signed=0, timeout_ms=TIMEOUT_MS):
    """A later sync while the agent runs: ensure() against the time server
    when the link has come up or RESYNC_MS have passed. Returns what
    ensure() returns. A clock the server sets that was not synced before
    (the board booted without a link: it ran from the floor), or that it
    moves by more than STEP_EVENT_S, is a security event clock/synced ok
    (the step in the detail): the fleet sees when a board's time jumped."""
    was, before = synced(), now()
    src, t = ensure(server, signed, timeout_ms)
    if src == "ntp" and (not was or abs(t - before) > STEP_EVENT_S):
        from ironclad import events

        events.record("clock", "synced", "ok", "%s %+d s" % ("first" if not was else "step", t - before))
    return src, t
