# Stand-in for the ESP32 port's `socket` on a virtual board (start.py puts
# this directory first on the path): the port's own socket module, reached
# as `usocket` (an extensible built-in shadowed by this file keeps its
# u-prefixed alias: py/objmodule.c mp_module_get_builtin, MicroPython
# v1.28.0), gated by the simulated Wi-Fi link (network.py next to this
# file), so that nothing
# reaches the network before the station has an address, as on a board:
#   * getaddrinfo of a name fails with OSError(-202) (lwIP EAI_FAIL, raised
#     negated by ports/esp32/modsocket.c _getaddrinfo_inner: no DNS server
#     without a link); a numeric address resolves, as lwIP parses it locally;
#   * a stream socket's connect() fails with OSError(EHOSTUNREACH): lwIP finds
#     no route (ip4_route returns no netif; ERR_RTE maps to EHOSTUNREACH in
#     lwIP's err_to_errno); a datagram socket's send() fails the same way.
# Sockets made while the link is up are the port's own (TLS wraps them, poll
# sees them); the simulated driver closes them when the link drops.
from usocket import *  # noqa: F401,F403  (constants and the rest, unchanged)
import usocket as _port

import network

_EHOSTUNREACH = 113
_ENOTCONN = 107


def _numeric(host):
    p = host.split(".") if isinstance(host, str) else ()
    return len(p) == 4 and all(x.isdigit() and int(x) < 256 for x in p)


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if not network.link_up() and not _numeric(host):
        raise OSError(-202)
    return _port.getaddrinfo(host, port, af, type, proto, flags)


class _Unrouted:
    """A socket made while the station has no address: every attempt to
    reach the network fails as lwIP's does with no route."""

    def __init__(self, kind):
        self._dgram = kind == SOCK_DGRAM

    def settimeout(self, t):
        pass

    def setblocking(self, flag):
        pass

    def setsockopt(self, *a):
        pass

    def bind(self, addr):
        pass

    def connect(self, addr):
        if not self._dgram:
            raise OSError(_EHOSTUNREACH)

    def send(self, data):
        raise OSError(_EHOSTUNREACH if self._dgram else _ENOTCONN)

    sendto = write = send

    def recv(self, n):
        raise OSError(_ENOTCONN)

    read = readinto = recv

    def fileno(self):
        return -1

    def close(self):
        pass


def socket(af=AF_INET, type=SOCK_STREAM, proto=0):
    if not network.link_up():
        return _Unrouted(type)
    s = _port.socket(af, type, proto)
    network.track(s)
    return s
