# The device directory on the host, for the stand-ins' side channels
# (board/network.py reads wifi.json, machine.WDT writes wdt): a VfsPosix used
# directly, never mounted, since once the root is the device's own littlefs
# a path there is not the host's.
# The unix port's vfs, taken at import: start.py imports this module before
# it narrows the built-in modules to the board's surface (the board's vfs has
# no VfsPosix; this side channel is the simulation's, not the device code's).
import vfs

import espsim

_host = None


def host():
    global _host
    if _host is None:
        _host = vfs.VfsPosix(espsim.devdir())
    return _host
