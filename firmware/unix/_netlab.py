# The `network` of a lab (ESPSIM_NET=up, see network.py): the station is
# active and has an address from the start and never loses it.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF

    def __init__(self, interface_id=STA_IF):
        self._sta = interface_id == STA_IF

    def active(self, is_active=None):
        return self._sta

    def connect(self, ssid=None, key=None, *, bssid=None):
        pass

    def disconnect(self):
        pass

    def isconnected(self):
        return self._sta

    def status(self, param=None):
        return STAT_GOT_IP if self._sta else None

    def ifconfig(self):
        return ("192.168.4.20", "255.255.255.0", "192.168.4.1", "192.168.4.1")


def link_up():
    return True
