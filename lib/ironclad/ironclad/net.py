# Network bring-up: Wi-Fi station mode with the credentials the technician
# provisioned (keystore entry "wifi", sealed like every keystore entry: the
# passphrase is a secret, never printed, logged or put in an event).
#
#   from ironclad import net
#   net.radio_on()                     # (ironclad.rng) before any key, nonce or salt
#   sta = net.Station.provisioned(ks)  # NotConfigured if no Wi-Fi was provisioned
#   sta.up(20000, tick=wdt.feed)       # at start: wait for an address, bounded
#   sta.maintain()                     # each loop: True while the link is up
#
# The port's driver (ports/esp32/network_wlan.c, MicroPython v1.28.0):
# WLAN(IF_STA).connect(ssid, key) returns at once; association and DHCP run
# in the background, and the driver reconnects by itself after every
# disconnection while a connection is requested. status() says why it is not
# connected (STAT_WRONG_PASSWORD, STAT_NO_AP_FOUND, ...). This module adds
# what the driver leaves to the program: a time limit on each connection
# attempt; after it, disconnect() (the driver stops retrying) and a new
# attempt after an exponential backoff with jitter (ironclad.mqtt.Backoff,
# so a fleet does not reassociate in step after an AP restart); one security
# event per outage saying why (wrong passphrase, AP absent, link lost), and
# one when the link is back.
#
# Ethernet: the ESP32 port offers network.LAN (MICROPY_PY_NETWORK_LAN), but
# neither Ironclad board (firmware/esp32/boards) has an Ethernet PHY; a board
# that has one would bring it up here the same way (LAN(...).active(True),
# isconnected()).
import json
import time
from micropython import const

import network

from ironclad import events
from ironclad.rng import radio_on

CONNECT_MS = const(20000)  # one association + DHCP attempt
_BACKOFF_BASE_MS = const(2000)
_BACKOFF_CAP_MS = const(300000)
_SSID_MAX = const(32)  # wifi_sta_config_t: 32 bytes of SSID, 64 of passphrase
_KEY_MIN = const(8)  # WPA2-PSK: 8-63 characters, or 64 hex digits
_KEY_MAX = const(64)

_IDLE = const(0)
_CONNECTING = const(1)
_UP = const(2)
_WAITING = const(3)


class NotConfigured(Exception):
    """No usable Wi-Fi credentials were provisioned."""


def check(ssid, key):
    """The provisioning rule (the host applies it too): an SSID of 1-32
    bytes; a WPA2 passphrase of 8-63 printable ASCII characters or 64 hex
    digits, or "" for an open network. ValueError naming the field, never
    the passphrase."""
    if not isinstance(ssid, str) or not 0 < len(ssid.encode()) <= _SSID_MAX:
        raise ValueError("Wi-Fi SSID must be 1-32 bytes")
    ok = isinstance(key, str)
    if ok and key:
        ok = _KEY_MIN <= len(key) <= _KEY_MAX
        for c in key if ok else "":
            if not 32 <= ord(c) < 127:
                ok = False
                break
        if ok and len(key) == _KEY_MAX:
            ok = all(c in "0123456789abcdefABCDEF" for c in key)
    if not ok:
        raise ValueError("Wi-Fi passphrase must be 8-63 printable ASCII characters, 64 hex digits, or empty (open network)")
    return ssid, key


def encode(ssid, key):
    return json.dumps({"ssid": ssid, "key": key}).encode()


def _reason(st):
    if st == network.STAT_WRONG_PASSWORD:
        return "wrong_passphrase"
    if st == network.STAT_NO_AP_FOUND:
        return "ap_absent"
    return "no_address"  # associating, or no DHCP lease, within the limit


class Station:
    def __init__(self, ssid, key, wlan=None, connect_ms=CONNECT_MS, backoff=None):
        self.ssid = ssid
        self._key = key
        self.wlan = wlan or network.WLAN(network.WLAN.IF_STA)
        self.connect_ms = connect_ms
        if backoff is None:
            from ironclad.mqtt import Backoff

            backoff = Backoff(_BACKOFF_BASE_MS, _BACKOFF_CAP_MS)
        self.backoff = backoff
        self._state = _IDLE
        self._since = 0
        self._outage = False  # an event was recorded for the current outage
        self.last = None  # why the link is down: wrong_passphrase, ap_absent, no_address, link_lost

    def __repr__(self):
        return "<Station %s>" % self.ssid  # never the passphrase

    @classmethod
    def provisioned(cls, ks, **kw):
        """The Station for the keystore's "wifi" entry; NotConfigured if
        there is none or it is unusable."""
        from ironclad.keystore import KeyStoreError

        try:
            raw = ks.get("wifi")
        except KeyStoreError as e:
            raise NotConfigured("Wi-Fi credentials unusable: %s" % e)
        if raw is None:
            raise NotConfigured("no Wi-Fi credentials: provision them with `ictl provision --wifi-ssid SSID`")
        try:
            w = json.loads(raw)
            ssid, key = check(w["ssid"], w["key"])
        except (ValueError, KeyError, TypeError):
            raise NotConfigured("Wi-Fi credentials malformed")
        return cls(ssid, key, **kw)

    def _connect(self):
        radio_on()
        self.wlan.connect(self.ssid, self._key)
        self._state = _CONNECTING
        self._since = time.ticks_ms()

    def _down(self, reason, detail):
        self.last = reason
        if not self._outage:
            self._outage = True
            events.record("network", reason, "failed", detail)

    def maintain(self):
        """Call from the main loop; never blocks. True while the station has
        an address."""
        now = time.ticks_ms()
        if self.wlan.isconnected():
            if self._state != _UP:
                self._state = _UP
                self.backoff.reset()
                if self._outage:
                    events.record("network", "link_up", "ok", "%s %s" % (self.ssid[:16], self.wlan.ifconfig()[0]))
                self._outage = False
                self.last = None
            return True
        if self._state == _UP:
            # Lost: the driver reassociates by itself; this attempt gets its time limit.
            self._down("link_lost", self.ssid[:32])
            self._state = _CONNECTING
            self._since = now
        elif self._state == _IDLE:
            self._connect()
        elif self._state == _CONNECTING and time.ticks_diff(now, self._since) >= self.connect_ms:
            st = self.wlan.status()
            self._down(_reason(st), "%s status %d" % (self.ssid[:24], st))
            self.wlan.disconnect()
            self._state = _WAITING
            self._since = time.ticks_add(now, self.backoff.next_ms())
        elif self._state == _WAITING and time.ticks_diff(now, self._since) >= 0:
            self._connect()
        return False

    def up(self, timeout_ms, tick=None, step_ms=50):
        """Bring the link up, waiting at most timeout_ms; tick() runs every
        step (the watchdog's feed). True if connected."""
        t0 = time.ticks_ms()
        while not self.maintain():
            if time.ticks_diff(time.ticks_ms(), t0) >= timeout_ms:
                return False
            if tick:
                tick()
            time.sleep_ms(step_ms)
        return True
