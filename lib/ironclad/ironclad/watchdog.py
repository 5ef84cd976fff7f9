# The hardware watchdog (machine.WDT: the ESP-IDF task watchdog, see
# ports/esp32/machine_wdt.c, MicroPython v1.28.0), started by the agent and
# fed by its loop and by long operations, so a hang in the field resets the
# board (the next boot reads machine.WDT_RESET).
#
#   from ironclad import watchdog
#   watchdog.start(30000)   # cannot be stopped once started
#   watchdog.feed()         # anywhere; nothing before start()
#
# Only the app starts it, never the boot path: a locked board whose app does
# not verify stays in recovery mode (REPL-less, but not resetting), and a
# trial image that hangs is reset by it, which spends the trial's attempts
# and ends in the rollback the verified boot makes (docs/verified-boot.md).
import machine

DEFAULT_MS = 30000  # above the longest step the agent takes between feeds
MIN_MS = 2000
MAX_MS = 120000

_wdt = None


def start(timeout_ms=DEFAULT_MS):
    """Start (or reconfigure) the watchdog; returns the timeout used. A
    board the watchdog reset last time says so in the security log."""
    global _wdt
    if _wdt is None and machine.reset_cause() == machine.WDT_RESET:
        from ironclad import events

        events.record("agent", "watchdog_reset", "failed", "the last run hung and was reset")
    timeout_ms = min(MAX_MS, max(MIN_MS, timeout_ms))
    _wdt = machine.WDT(0, timeout_ms)
    return timeout_ms


def feed():
    if _wdt is not None:
        _wdt.feed()
