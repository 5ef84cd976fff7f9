# Stand-in for the ESP32 port's `network` module in a lab: code that drives
# library modules without the boot path (tests, rigs). Its station is active
# and has an address from the start and never loses it; only what
# ironclad.rng asks (labs do not run ironclad.net), kept small for the labs'
# small heaps (on a board the module is C and costs the heap nothing). A lab
# has no socket stand-in either: the port's own socket module.
#
# A virtual board gets the simulated Wi-Fi instead: board/network.py and
# board/socket.py, which start.py puts first on the path (unless
# ESPSIM_NET=up: a lab that boots through start.py).
STA_IF = 0
AP_IF = 1


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF

    def __init__(self, interface_id=STA_IF):
        self._sta = interface_id == STA_IF

    def active(self, is_active=None):
        return self._sta

    def isconnected(self):
        return self._sta
