"""A tiny SNTP server (RFC 4330 server mode) on 127.0.0.1 for tests: the time
server a board's broker settings name (`ictl provision --ntp`), and a hostile
one when told to.

    with TimeServer() as ts:                  # a free UDP port on 127.0.0.1
        ... board asks ts.address ...
        ts.reply = "kod"                      # the next replies are hostile
        ts.requests                           # [(client address, request bytes)]

Replies (`reply`):
  ok             a correct reply: mode 4, the client's version, stratum 2,
                 the request's transmit timestamp echoed as originate, now()
  wrong_origin   the originate timestamp is not the request's (an off-path forger)
  kod            Kiss-o'-Death: stratum 0, reference id "RATE"
  stratum0       stratum 0 with a zero reference id
  stratum16      stratum 16 (unsynchronised)
  leap3          leap indicator 3 (clock not synchronised)
  below_floor    the time 10 years ago
  far_ahead      the time 30 years ahead
  zero_transmit  transmit timestamp 0
  client_mode    mode 3 instead of 4 (a client's packet reflected)
  version1       version 1
  truncated      only the first 40 bytes
  wrong_source   a correct reply, but sent from another port (someone who
                 saw the request answering for the server)
  silent         no reply at all (the client must time out)
The server's time is now() (default: this host's clock) plus `offset` seconds.
"""
import os
import socket
import struct
import threading
import time

NTP_UNIX = 2208988800  # seconds from 1900-01-01 to 1970-01-01
REPLIES = ("ok", "wrong_origin", "kod", "stratum0", "stratum16", "leap3", "below_floor", "far_ahead",
           "zero_transmit", "client_mode", "version1", "truncated", "wrong_source", "silent")
_YEAR = 365 * 86400


def ntp_timestamp(t):
    """Unix seconds (float) -> the 64-bit NTP timestamp (era wraps in 2036)."""
    secs = int(t) + NTP_UNIX
    frac = int((t - int(t)) * (1 << 32))
    return struct.pack(">II", secs & 0xFFFFFFFF, frac)


def build_reply(request, now, kind="ok"):
    """The server's answer to one client request under reply `kind`; None for
    "silent" or a request that is not an SNTP client packet."""
    if kind == "silent" or len(request) < 48 or request[0] & 7 != 3:
        return None
    version = (request[0] >> 3) & 7
    leap, mode, stratum, refid = 0, 4, 2, b"\x7f\x00\x00\x01"
    origin = request[40:48]
    if kind == "wrong_origin":
        origin = os.urandom(8)
    elif kind == "kod":
        stratum, refid = 0, b"RATE"
    elif kind == "stratum0":
        stratum, refid = 0, bytes(4)
    elif kind == "stratum16":
        stratum = 16
    elif kind == "leap3":
        leap = 3
    elif kind == "below_floor":
        now -= 10 * _YEAR
    elif kind == "far_ahead":
        now += 30 * _YEAR
    elif kind == "client_mode":
        mode = 3
    elif kind == "version1":
        version = 1
    elif kind not in REPLIES:
        raise ValueError("unknown reply kind %r" % kind)
    stamp = ntp_timestamp(now)
    transmit = bytes(8) if kind == "zero_transmit" else stamp
    pkt = (bytes([(leap << 6) | (version << 3) | mode, stratum, 6, 0xEC]) + struct.pack(">II", 0, 0) + refid
           + stamp + origin + stamp + transmit)
    return pkt[:40] if kind == "truncated" else pkt


class TimeServer:
    def __init__(self, host="127.0.0.1", port=0, reply="ok", offset=0.0, now=time.time):
        if reply not in REPLIES:
            raise ValueError("unknown reply kind %r" % reply)
        self.reply = reply
        self.offset = offset
        self.now = now
        self.requests = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)  # the serving loop sees stop() within this
        self._stopping = threading.Event()
        self.host, self.port = self.sock.getsockname()
        self._thread = None

    @property
    def address(self):
        """As a board's broker settings name it: "host:port"."""
        return "%s:%d" % (self.host, self.port)

    def start(self):
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self):
        while not self._stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            self.requests.append((peer, data))
            kind = self.reply
            pkt = build_reply(data, self.now() + self.offset, "ok" if kind == "wrong_source" else kind)
            if pkt is None:
                continue
            try:
                if kind == "wrong_source":
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                        other.bind((self.host, 0))
                        other.sendto(pkt, peer)
                else:
                    self.sock.sendto(pkt, peer)
            except OSError:
                pass  # the client is gone: nothing to answer

    def stop(self):
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
