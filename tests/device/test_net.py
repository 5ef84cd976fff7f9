# Network bring-up (ironclad.net) against the stand-in `network` module, the
# socket gate, and the entropy gate (ironclad.rng). These run with the
# simulated Wi-Fi a virtual board has (LAB_NET = False: no lab link), each
# from the radio's power-up state: off, nothing connected.
import json
import os
import time

import simhost
import network
import socket

from ironclad import events, net, rng

# More than the default: the simulated radio (firmware/unix/board/network.py,
# socket.py; C on a board) compiles into this heap, beside the keystore
# (which test_keystore.py runs at 144).
HEAP_KIB = 192  # passed at 144 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts
LAB_NET = False

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"
KEY = "correct horse battery"


def _power_up():
    sta = network.WLAN(network.WLAN.IF_STA)
    sta.active(False)
    return sta


def _world(*aps):
    with simhost.host().open("wifi.json", "w") as f:
        json.dump({"aps": list(aps)}, f)
    network._read_at = None  # re-read now, not after the stand-in's 200 ms


class _Backoff:
    # (ironclad.mqtt.Backoff in the agent; its module is too big to compile
    # into this heap beside the rest)
    def next_ms(self):
        return 50

    def reset(self):
        pass


def _station(connect_ms=400):
    return net.Station("home", KEY, connect_ms=connect_ms, backoff=_Backoff())


def _events():
    return [(r["kind"], r["reason"], r["outcome"], r["detail"]) for r in events.since(0)]


def _until(sta, want, ms=3000):
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        if sta.maintain() == want:
            return True
        time.sleep_ms(20)
    return False


def _refused(draw):
    try:
        draw()
    except rng.EntropyError:
        return True
    return False


def test_no_key_drawn_before_the_radio_is_on():
    from ironclad import p256

    _power_up()
    assert _refused(lambda: rng.get(16)) and _refused(p256.generate) and not rng.ready()
    rng.radio_on()
    assert len(rng.get(16)) == 16 and rng.ready()
    assert len(p256.generate()) == 32


def test_no_storage_key_or_sealing_nonce_before_the_radio_is_on():
    from ironclad.keystore import KeyStore

    _power_up()
    ks = KeyStore()
    assert _refused(lambda: ks.put("cert", b"x")) and ks.names() == []
    rng.radio_on()
    ks.put("cert", b"x")
    assert ks.get("cert") == b"x"


def test_no_socket_before_the_link_is_up():
    sta = _power_up()
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 1883))
        raise AssertionError("connected with no link")
    except OSError as e:
        assert e.args[0] == 113, e  # EHOSTUNREACH, as lwIP with no route
    try:
        socket.getaddrinfo("broker.example", 8883)
        raise AssertionError("resolved a name with no link")
    except OSError as e:
        assert e.args[0] == -202, e
    try:
        sta.connect("home", KEY)
        raise AssertionError("connect on an inactive interface")
    except OSError as e:
        assert "Not Started" in str(e)


def test_connects_and_a_link_drop_closes_its_sockets():
    _power_up()
    _world({"ssid": "home", "key": KEY, "assoc_ms": 50})
    st = _station()
    assert st.up(2000)
    assert st.wlan.status() == network.STAT_GOT_IP and st.wlan.ifconfig()[0] != "0.0.0.0"
    srv = socket.socket()
    srv.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
    srv.listen(1)
    assert srv.fileno() >= 0
    _world()  # the AP goes away
    assert _until(st, False)
    assert srv.fileno() < 0  # closed with the link, as lwIP aborts them
    assert st.last == "link_lost"
    assert ("network", "link_lost", "failed", "home") in _events()
    _world({"ssid": "home", "key": KEY, "assoc_ms": 50})  # back
    assert _until(st, True)
    assert any(e[1] == "link_up" and e[2] == "ok" for e in _events())


def test_wrong_passphrase_is_an_event_and_never_the_passphrase():
    _power_up()
    _world({"ssid": "home", "key": "another passphrase", "assoc_ms": 20})
    st = _station(connect_ms=300)
    assert not st.up(1200)
    assert st.last == "wrong_passphrase", st.last
    ev = [e for e in _events() if e[0] == "network"]
    assert ev and ev[-1][1] == "wrong_passphrase" and "status 202" in ev[-1][3], ev
    assert KEY not in repr(st) and all(KEY not in str(e) for e in _events())
    # Once the AP takes the passphrase again, the next attempt after the backoff connects.
    _world({"ssid": "home", "key": KEY, "assoc_ms": 20})
    assert _until(st, True)


def test_absent_ap_then_slow_association():
    _power_up()
    _world()
    st = _station(connect_ms=500)
    assert not st.up(1200)
    assert st.last == "ap_absent", st.last
    assert st.wlan.status() == network.STAT_IDLE or st.last == "ap_absent"
    # The AP appears, but associates slower than one attempt's limit: no
    # address in time, retried with backoff, connected once an attempt is
    # given long enough.
    _world({"ssid": "home", "key": KEY, "assoc_ms": 800})
    assert not _until(st, True, 450)
    st.connect_ms = 2000
    assert _until(st, True, 4000)


def test_credentials_rule():
    for ssid, key in (("", KEY), ("x" * 33, KEY), ("home", "short"), ("home", "x" * 64), ("home", "caf\u00e9 au lait")):
        try:
            net.check(ssid, key)
            raise AssertionError("accepted %r" % ssid)
        except ValueError as e:
            assert key not in str(e) or not key
    assert net.check("home", "") == ("home", "")
    assert net.check("home", "ab" * 32) == ("home", "ab" * 32)
