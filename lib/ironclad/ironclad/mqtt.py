# MQTT 3.1.1 client with the umqtt.simple surface, over a TLS socket the
# caller's SSLContext makes. Every length read off the wire is capped, input
# is checked with real exceptions (never assert) and every blocking call has
# a time limit.
import socket
import struct
import time
from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)


class MQTTError(Exception):
    """A protocol violation or refusal by the broker; the connection is unusable."""


class MQTTClient:
    max_packet = 4096  # the largest packet accepted from the broker (STYLE: bound every length)

    def __init__(self, client_id, server, port, ssl_context, server_hostname=None, keepalive=60, timeout_s=10):
        self.client_id = client_id
        self.server = server
        self.port = port
        self.ctx = ssl_context
        self.hostname = server_hostname or server
        self.keepalive = keepalive
        self.timeout = timeout_s
        self.sock = None
        self.pid = 0
        self.cb = None
        self.lw = None

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw = (topic, msg, retain, qos)

    # --- wire helpers -----------------------------------------------------------
    def _read(self, n):
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        deadline = time.ticks_add(time.ticks_ms(), self.timeout * 1000)
        while got < n:
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError(110, "ETIMEDOUT")
            k = self.sock.readinto(mv[got:])
            if not k:
                raise OSError(104, "connection closed by broker")
            got += k
        return buf

    def _recv_len(self):
        # Remaining length: at most 4 bytes, never more than max_packet.
        n = 0
        for i in range(4):
            b = self._read(1)[0]
            n |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if n > self.max_packet:
                    raise MQTTError("packet of %d bytes exceeds the cap" % n)
                return n
        raise MQTTError("remaining length longer than 4 bytes")

    @staticmethod
    def _len(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return out

    @staticmethod
    def _str(s):
        if isinstance(s, str):
            s = s.encode()
        return struct.pack("!H", len(s)) + s

    def _send(self, ptype, body):
        self.sock.write(bytes([ptype]) + self._len(len(body)) + body)

    # --- the umqtt.simple surface --------------------------------------------
    def connect(self, clean_session=True):
        ai = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(ai[-1])
            # TLS only: there is no code path that sends MQTT in plaintext.
            self.sock = self.ctx.wrap_socket(s, server_hostname=self.hostname)
        except Exception:
            s.close()
            raise
        flags = 0x02 if clean_session else 0
        payload = self._str(self.client_id)
        if self.lw:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += self._str(topic) + self._str(msg)
        body = self._str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive) + payload
        self._send(_CONNECT, body)
        head = self._read(1)[0]
        if head != _CONNACK or self._recv_len() != 2:
            raise MQTTError("expected CONNACK")
        ack = self._read(2)
        if ack[1]:
            raise MQTTError("broker refused the connection, code %d" % ack[1])
        return ack[0] & 1

    def disconnect(self):
        try:
            self._send(_DISCONNECT, b"")
        finally:
            self.sock.close()
            self.sock = None

    def ping(self):
        self._send(_PINGREQ, b"")

    def _next_pid(self):
        self.pid = self.pid % 0xFFFF + 1
        return self.pid

    def publish(self, topic, msg, retain=False, qos=0):
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        body = self._str(topic)
        pid = 0
        if qos:
            pid = self._next_pid()
            body += struct.pack("!H", pid)
        self._send(_PUBLISH | (qos << 1) | (1 if retain else 0), body + msg)
        if qos:
            deadline = time.ticks_add(time.ticks_ms(), self.timeout * 1000)
            while time.ticks_diff(deadline, time.ticks_ms()) > 0:
                op = self.wait_msg()
                if op == _PUBACK and self._acked == pid:
                    return pid
            raise OSError(110, "no PUBACK")
        return pid

    def subscribe(self, topic, qos=0):
        pid = self._next_pid()
        self._send(_SUBSCRIBE, struct.pack("!H", pid) + self._str(topic) + bytes([qos]))
        while True:
            if self.wait_msg() == _SUBACK:
                return

    def wait_msg(self, op=None):
        """Read one packet (time-limited); deliver PUBLISH to the callback; return its type."""
        if op is None:
            op = self._read(1)[0]
        n = self._recv_len()
        t = op & 0xF0
        if t == _PUBLISH:
            if n < 2:
                raise MQTTError("short PUBLISH")
            body = self._read(n)
            tl = struct.unpack("!H", body[:2])[0]
            if 2 + tl > n:
                raise MQTTError("topic length exceeds the packet")
            topic = bytes(body[2 : 2 + tl])
            pos = 2 + tl
            qos = (op >> 1) & 3
            if qos:
                if pos + 2 > n:
                    raise MQTTError("short PUBLISH")
                pid = struct.unpack("!H", body[pos : pos + 2])[0]
                pos += 2
                self._send(_PUBACK, struct.pack("!H", pid))
            if self.cb:
                self.cb(topic, bytes(body[pos:]))
            return _PUBLISH
        body = self._read(n) if n else b""
        if t == _PUBACK:
            if n != 2:
                raise MQTTError("bad PUBACK")
            self._acked = struct.unpack("!H", body)[0]
        elif t not in (_SUBACK, _PINGRESP):
            raise MQTTError("unexpected packet type 0x%02x" % op)
        return t

    def check_msg(self):
        self.sock.setblocking(False)
        try:
            b = self.sock.read(1)
        finally:
            self.sock.settimeout(self.timeout)
        if not b:
            return None
        return self.wait_msg(b[0])
