# Stand-in for the ESP32 port's `network` module on a virtual board (start.py
# puts this directory first on the path): the WLAN station interface, as ports/esp32/network_wlan.c (MicroPython v1.28.0)
# implements it over the ESP-IDF Wi-Fi driver, with simulated access points.
#
# The world the radio sees is <device dir>/wifi.json, written by the host
# (`ictl run`, tests, the soak campaign), re-read while the device runs so a
# test changes the world under a running board:
#   {"aps": [{"ssid": "...", "key": "...", "up": true, "assoc_ms": 100, "rssi": -55}],
#    "ip": "192.168.4.20"}
# No file: no access point in range. Faults are changes of that world:
#   wrong passphrase   the AP's "key" differs from the one connect() was given
#   AP absent          no entry with the SSID, or "up": false
#   link lost          the entry is removed or set "up": false while connected
#   slow association   "assoc_ms": how long an attempt takes to get an IP
#   driver hang        "hang": true: the next isconnected()/status() never
#                      returns (what the hardware watchdog is for)
#
# What the port does and this copies (network_wlan.c, v1.28.0):
#   * WLAN(IF_STA) is one object per interface; active(True) starts the
#     driver (the radio is on from then: the hardware RNG has its entropy
#     source, see ironclad.rng);
#   * connect(ssid, key) returns at once; association and DHCP run in the
#     background; the driver reconnects on its own after every disconnection
#     while a connection is requested (conf_wifi_sta_reconnects == 0: forever),
#     until disconnect() or active(False);
#   * config(reconnects=n) (bounding the driver's retries), ipconfig() and
#     status("rssi") are not modelled: the device code does not use them;
#   * status() is STAT_GOT_IP while connected, else the last disconnection
#     reason for the cases it names (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD,
#     ...), STAT_CONNECTING while a connection is requested, STAT_IDLE;
#   * connect() on an inactive interface raises OSError("Wifi Not Started")
#     (network_common.c esp_exceptions, ESP_ERR_WIFI_NOT_STARTED).
# The ESP-IDF reason codes are wifi_err_reason_t (esp_wifi_types_generic.h, v5.5).
#
# Sockets: the stand-in `socket` module (socket.py next to this file) asks
# link_up() before it lets a connection out, and the sockets it opened are
# closed when the link drops (on a board lwIP aborts them when the station
# loses its address; the program sees its connection end either way).
#
# The radio is off and nothing is connected at power-up, as on a board.
# (Labs that drive library modules without the boot path get the small
# station of firmware/unix/network.py instead.) Times are the simulation's (an absent AP is reported after a
# 300 ms scan; a board's all-channel scan takes seconds).
import json
import time

from micropython import const

STA_IF = const(0)  # WIFI_IF_STA
AP_IF = const(1)  # WIFI_IF_AP

STAT_IDLE = const(1000)
STAT_CONNECTING = const(1001)
STAT_GOT_IP = const(1010)
STAT_BEACON_TIMEOUT = const(200)  # WIFI_REASON_BEACON_TIMEOUT
STAT_NO_AP_FOUND = const(201)  # WIFI_REASON_NO_AP_FOUND
STAT_WRONG_PASSWORD = const(202)  # WIFI_REASON_AUTH_FAIL
STAT_ASSOC_FAIL = const(203)  # WIFI_REASON_ASSOC_FAIL
STAT_CONNECT_FAIL = const(203)
STAT_HANDSHAKE_TIMEOUT = const(204)  # WIFI_REASON_HANDSHAKE_TIMEOUT
_REASON_ASSOC_LEAVE = const(8)  # after disconnect()

_SCAN_MS = const(300)
_ASSOC_MS = const(100)
_REREAD_MS = const(200)
_SSID_MAX = const(32)  # wifi_sta_config_t.ssid
_KEY_MAX = const(64)  # wifi_sta_config_t.password

_world = {"aps": []}
_read_at = None
_sockets = []


def _now():
    return time.ticks_ms()


def _read_world():
    # At most every _REREAD_MS: the host changes the file under a running device.
    global _world, _read_at
    now = _now()
    if _read_at is not None and time.ticks_diff(now, _read_at) < _REREAD_MS:
        return _world
    _read_at = now
    import simhost

    try:
        with simhost.host().open("wifi.json", "r") as f:
            w = json.load(f)
        _world = w if isinstance(w, dict) else {"aps": []}
    except (OSError, ValueError):
        _world = {"aps": []}
    return _world


def _ap(ssid):
    for ap in _read_world().get("aps") or ():
        if isinstance(ap, dict) and ap.get("ssid") == ssid and ap.get("up", True):
            return ap
    return None


def _drop_sockets():
    while _sockets:
        try:
            _sockets.pop().close()
        except OSError:
            pass


def track(s):
    # The sockets opened while the link was up, closed when it drops.
    for i in range(len(_sockets) - 1, -1, -1):
        if _sockets[i].fileno() < 0:
            _sockets.pop(i)
    _sockets.append(s)


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF

    _objs = {}

    def __new__(cls, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        o = cls._objs.get(interface_id)
        if o is None:
            o = object.__new__(cls)
            o._if = interface_id
            o._active = False
            o._requested = False
            o._connected = False
            o._reason = 0
            o._ssid = None
            o._key = None
            o._attempt_end = None
            o._assoc = False
            cls._objs[interface_id] = o
        return o

    def __init__(self, interface_id=STA_IF):
        pass

    # --- the driver ---------------------------------------------------------
    def _attempt(self):
        # A scan when the AP is not in range, else an association (+ DHCP).
        ap = _ap(self._ssid)
        self._assoc = ap is not None
        self._attempt_end = time.ticks_add(_now(), int(ap.get("assoc_ms", _ASSOC_MS)) if ap else _SCAN_MS)

    def _poll(self):
        if self._if != STA_IF or not self._active:
            return
        while _read_world().get("hang"):
            pass  # a driver call that never returns (re-reading the world: a test ends it)
        if self._connected:
            if _ap(self._ssid) is None:
                # Beacons stopped: the driver reports the loss and, since a
                # connection is still requested, tries again by itself.
                self._connected = False
                self._reason = STAT_BEACON_TIMEOUT
                _drop_sockets()
                self._attempt()
            return
        if not self._requested or self._attempt_end is None or time.ticks_diff(_now(), self._attempt_end) < 0:
            return
        ap = _ap(self._ssid)
        if ap is None:
            self._reason = STAT_NO_AP_FOUND
        elif not self._assoc:
            pass  # found by this scan: associate now
        elif str(ap.get("key", ""))[:_KEY_MAX] != self._key:
            self._reason = STAT_WRONG_PASSWORD
        else:
            self._connected = True
            self._attempt_end = None
            return
        self._attempt()

    # --- the MicroPython API ------------------------------------------------
    def active(self, is_active=None):
        if is_active is None:
            return self._active
        is_active = bool(is_active)
        if self._active and not is_active:
            self._stop()
        self._active = is_active
        return is_active

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self._if != STA_IF:
            raise OSError("Wifi Invalid Mode")
        if not self._active:
            raise OSError("Wifi Not Started")
        if ssid is not None:
            self._ssid = str(ssid)[:_SSID_MAX]
        if key is not None:
            self._key = str(key)[:_KEY_MAX]
        if self._connected:
            _drop_sockets()
        self._connected = False
        self._requested = True
        self._reason = 0
        self._attempt()

    def _stop(self):
        # No connection requested any more: the driver stops retrying.
        self._requested = False
        if self._connected:
            _drop_sockets()
        self._connected = False
        self._attempt_end = None

    def disconnect(self):
        self._stop()
        self._reason = _REASON_ASSOC_LEAVE

    def isconnected(self):
        self._poll()
        return self._active and self._connected

    def status(self, param=None):
        self._poll()
        if param is not None:
            raise ValueError("unknown status param")
        if self._if != STA_IF:
            return None
        if self._connected:
            return STAT_GOT_IP
        r = self._reason
        if r in (STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD):
            return r
        if r == _REASON_ASSOC_LEAVE:
            return STAT_IDLE
        if self._requested:
            return STAT_CONNECTING
        return STAT_IDLE if not r else r

    def ifconfig(self):
        self._poll()
        if not self._connected:
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        ip = str(_read_world().get("ip", "192.168.4.20"))
        gw = ip.rsplit(".", 1)[0] + ".1"
        return (ip, "255.255.255.0", gw, gw)


def link_up():
    """Unix port only: the station has an address (what lets a socket out)."""
    sta = WLAN._objs.get(STA_IF)
    return sta is not None and sta.isconnected()
