# The device directory on the host, for the stand-ins' side channels
# (board/network.py reads wifi.json, machine.WDT writes wdt): a VfsPosix used
# directly, never mounted, since once the root is the device's own littlefs
# a path there is not the host's.
import espsim

_host = None


def host():
    global _host
    if _host is None:
        import vfs

        _host = vfs.VfsPosix(espsim.devdir())
    return _host
