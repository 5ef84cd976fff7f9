# Stand-in for the ESP32 port's `socket` on the unix port: the port's own
# socket module, reached as `usocket` (an extensible built-in shadowed by
# this file on the path keeps its u-prefixed alias: py/objmodule.c
# mp_module_get_builtin, MicroPython v1.28.0). On a virtual board
# getaddrinfo() and socket() go through _sockgate.py, which lets nothing out
# before the simulated station has an address; a lab (ESPSIM_NET=up, see
# network.py) has its link up from the start and gets the port's own.
import os

from usocket import *  # noqa: F401,F403

if os.getenv("ESPSIM_NET") != "up":
    from _sockgate import getaddrinfo, socket  # noqa: F401
