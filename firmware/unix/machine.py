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
    On an ESP32, esp_restart() reads back as SOFT_RESET."""
    espsim.reset("SOFT")


def idle():
    time.sleep_ms(1)


class WDT:
    """Watchdog: a missed feed resets the device, as the task watchdog does."""

    def __init__(self, id=0, timeout=5000):
        self._timeout = timeout
        self.feed()

    def feed(self):
        self._due = time.ticks_add(time.ticks_ms(), self._timeout)

    def expired(self):
        # The unix port has no timer interrupt: long loops call this to let a
        # missed feed take effect at the next check.
        if time.ticks_diff(time.ticks_ms(), self._due) > 0:
            espsim.reset("WDT")
