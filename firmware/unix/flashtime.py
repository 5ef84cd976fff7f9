# Flash timing for the simulated ESP32 (espsim.Flash, under
# ESPSIM_FLASH_TIMING): each flash operation takes the time a board's flash
# chip takes, so code that runs long between watchdog feeds on a board (an
# update writing hundreds of sectors in one MQTT callback) is reset by the
# virtual board's watchdog here too. Off by default: operations take no time.
#
#   typical  a 4 KiB sector erase 45 ms, a 256-byte page program 0.6 ms: the
#            typical figures of the GigaDevice GD25Q127/GD25Q128 that ESP-IDF
#            sizes its driver by (components/spi_flash/spi_flash_chip_generic.c,
#            v5.5: SPI_FLASH_GENERIC_SECTOR_ERASE_TIMEOUT_MS 600, "according
#            to GD25Q127(125°) + 100ms", i.e. the datasheet's 500 ms worst
#            case; SPI_FLASH_GENERIC_PAGE_PROGRAM_TIMEOUT_MS 500)
#   E:P      E ms per sector erase, P microseconds per page program
# The CPU waits meanwhile, as it does in the driver's busy poll.
import time

from espsim import SimError


class Timing:
    def __init__(self, v):
        if v == "typical":
            v = "45:600"
        try:
            e, p = v.split(":")
            self.erase_ms, self.page_us = max(0, int(e)), max(0, int(p))
        except ValueError:
            raise SimError("ESPSIM_FLASH_TIMING must be typical or E:P (ms per sector erase, us per page), not %r" % v)

    def wait(self, kind, addr, n):
        # An erase: one sector. A write: each 256-byte page it touches.
        if kind == "E":
            time.sleep_ms(self.erase_ms)
        else:
            time.sleep_us(self.page_us * ((addr % 256 + n + 255) // 256))
