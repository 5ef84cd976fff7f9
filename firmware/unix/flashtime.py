# Flash timing for the simulated ESP32, imported by start.py under
# ESPSIM_FLASH_TIMING (and only then: the stand-ins share the app's heap,
# and the boot labs' margin is small): each flash operation (espsim.Flash._op:
# a sector erase, a write) takes the time a board's flash chip takes, so code
# that runs long between watchdog feeds on a board (an update writing dozens
# of sectors inside one MQTT callback) is reset by the virtual board's
# watchdog here too. Without it operations take no time.
#
#   typical  a 4 KiB sector erase 45 ms, a 256-byte page program 0.6 ms: the
#            typical figures of the GigaDevice GD25Q127/GD25Q128 that ESP-IDF
#            sizes its driver by (components/spi_flash/spi_flash_chip_generic.c,
#            v5.5: SPI_FLASH_GENERIC_SECTOR_ERASE_TIMEOUT_MS 600, "according
#            to GD25Q127(125°) + 100ms", i.e. the datasheet's 500 ms worst
#            case; SPI_FLASH_GENERIC_PAGE_PROGRAM_TIMEOUT_MS 500)
#   E:P      E ms per sector erase, P microseconds per page program
# The CPU waits meanwhile, as it does in the driver's busy poll.
import os
import time

import espsim

_v = os.getenv("ESPSIM_FLASH_TIMING") or "0:0"
if _v == "typical":
    _v = "45:600"
try:
    ERASE_MS, PAGE_US = [max(0, int(x)) for x in _v.split(":")]
except ValueError:
    raise espsim.SimError("ESPSIM_FLASH_TIMING must be typical or E:P (ms per sector erase, us per page), not %r" % _v)

_op = espsim.Flash._op


def _timed_op(self, kind, addr, n):
    # An erase: one sector. A write: each 256-byte page it touches.
    if kind == "E":
        time.sleep_ms(ERASE_MS)
    else:
        time.sleep_us(PAGE_US * ((addr % 256 + n + 255) // 256))
    return _op(self, kind, addr, n)


espsim.Flash._op = _timed_op
