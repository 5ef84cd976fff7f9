# The one source of random bytes for the device code: keys, nonces, nonce
# epochs, salts, jitter. Every draw goes through get() (tests/host/
# test_entropy.py checks that no other device module calls os.urandom or
# imports random).
#
# Why a gate: on an ESP32, os.urandom fills from esp_random()
# (ports/esp32/mphalport.c mp_hal_get_random, MicroPython v1.28.0), the
# hardware RNG. ESP-IDF v5.5 (api-reference/system/random): its output is
# true random only while an entropy source runs, the RF subsystem (Wi-Fi or
# Bluetooth enabled) or the bootloader's source (bootloader_random_enable());
# otherwise it is pseudo-random. MicroPython exposes no
# bootloader_random_enable, so the radio is the source the device code can
# switch on: network.WLAN(IF_STA).active(True) (radio_on() below).
# get() refuses until the radio is on; it never falls back to a weaker source.
# Only hardware can confirm the entropy itself; the simulation enforces the
# order (its network stand-in starts with the radio off).
import os

import network  # loaded with this module, not at the first draw (a fragment in mid-heap)


class EntropyError(Exception):
    """A random draw before the hardware RNG has its entropy source."""


def ready():
    """True while Wi-Fi is on (station or access point interface active)."""
    return network.WLAN(network.WLAN.IF_STA).active() or network.WLAN(network.WLAN.IF_AP).active()


def get(n):
    """n random bytes from the hardware RNG; EntropyError while the radio is off."""
    if not ready():
        raise EntropyError("no entropy source: turn the radio on (ironclad.rng.radio_on) before drawing keys or nonces")
    return os.urandom(n)


def below(n):
    """A random int in [0, n) (0 when n <= 0); for jitter, not keys."""
    return int.from_bytes(get(4), "big") % n if n > 0 else 0


def radio_on():
    """Start the Wi-Fi driver (station interface active, not connected):
    from here draws are true random. Returns the station interface."""
    sta = network.WLAN(network.WLAN.IF_STA)
    if not sta.active():
        sta.active(True)
    return sta
