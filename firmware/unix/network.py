# Stand-in for the ESP32 port's `network` module on the unix port.
#
# A virtual board (the boot path, the agent) gets the simulated Wi-Fi of
# _netsim.py: the radio off at power-up, the access points of
# <device dir>/wifi.json, the driver's status codes, reconnects and faults.
# A lab that drives library modules without the boot path sets ESPSIM_NET=up
# (ictl.wifisim.LAB_NET) and gets _netlab.py: the radio on and the link up
# from the start, in a few hundred bytes of heap (on a board this module is C
# and costs the heap nothing; the full simulation would crowd a lab's small
# heap).
import os

if os.getenv("ESPSIM_NET") == "up":
    from _netlab import *  # noqa: F401,F403
else:
    from _netsim import *  # noqa: F401,F403
