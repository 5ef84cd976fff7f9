# MQTT 3.1.1 client over mutual TLS: the umqtt.simple surface, hardened.
#
#   from ironclad.mqtt import MQTTClient, MQTTError
#   c = MQTTClient("dev-1", "broker.example", 8883, ssl_context,
#                  server_hostname="broker.example", keepalive=60)
#   c.set_last_will("fleet/dev-1/state", b"offline", retain=True, qos=1)
#   c.set_callback(lambda topic, msg: ...)       # topic, msg: bytes
#   c.connect()                                  # -> session_present (bool)
#   c.subscribe("fleet/dev-1/cmd")               # -> granted QoS (0x80 refused)
#   c.publish("fleet/dev-1/telemetry", data, qos=1)        # waits for PUBACK
#   c.publish(topic, data, qos=1, wait=False)    # pipelined: queued in the write
#                                                # buffer, returns the packet id;
#   c.sync()                                     # sends, waits for every PUBACK
#                                                # (set_ack_callback(f) gets each)
#   c.check_msg()     # never blocks: handles what has arrived, keepalive, resends
#   c.wait_msg()      # waits at most timeout_ms for a packet
#   c.ping(); c.disconnect()
#
# The agent's loop calls maintain() instead of connect()/check_msg(): it
# services the connection and, after a drop, reconnects with exponential
# backoff and jitter (Backoff), resubscribes and resends unacknowledged QoS 1
# messages with DUP set. reconnect() is the blocking form.
#
# Hardening (what umqtt.simple lacks):
#   * TLS only, CERT_REQUIRED, the server host name checked: there is no
#     plaintext code path. The caller builds the SSLContext (CA, certificate
#     and key from the keystore).
#   * Every length read off the wire is capped: the remaining length is at
#     most 4 bytes and at most max_packet, a topic fits its packet, each
#     packet type has its exact size; input is checked with exceptions, never
#     assert. Packets are read into one buffer allocated up front.
#   * A time limit on every blocking call: connect (TCP, TLS handshake,
#     CONNACK, restoring subscriptions) within connect_timeout_s (default
#     timeout_s); once a packet's first byte has arrived the whole packet must
#     arrive within timeout_s (a slow drip is cut off, not reset per byte);
#     PUBACK within timeout_s (one resend with DUP, then the connection is
#     dropped); PINGRESP within timeout_s.
#   * QoS 0 and 1 (QoS 2 is never requested, so a QoS 2 packet is a protocol
#     violation), packet ids tracked in a bounded in-flight window.
#   * MQTT 3.1.1's rules on what the broker sends: topics are well-formed
#     UTF-8 without U+0000 (utf8_ok), a QoS 0 PUBLISH has no DUP, a CONNACK
#     answering a clean session has session-present 0. Any packet read after
#     a PINGREQ proves the broker alive: a burst does not starve keepalive.
#
# Errors: every failure of the connection raises an MQTTError subclass and
# leaves the client disconnected (the socket closed); maintain() catches them.
#   ProtocolError   the broker broke MQTT (malformed, oversized, unexpected)
#   TLSError        handshake or certificate verification failed
#   Refused         CONNACK with a non-zero return code (.code)
#   Timeout         a deadline passed
#   ConnectionLost  the socket failed or closed between packets
# Protocol violations, TLS failures and refusals are security events:
# ironclad.events.record(kind, reason) with kind "mqtt" or "tls" and these
# reasons, each recorded at most once per outage so a hostile broker cannot
# flood the ring:
#   mqtt: bad_length too_big bad_topic bad_packet unexpected unknown_puback
#         no_memory qos2 truncated slow_packet bad_connack refused_<code>
#   tls:  cert_expired cert_not_yet_valid hostname_mismatch cert_untrusted
#         cert_invalid handshake
import os
import select
import socket
import ssl
import time
from micropython import const

from ironclad import events

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_DUP = const(0x08)
_MAX_REMAINING = const(268435455)  # 4 varint bytes
_MAX_TOPIC = const(256)  # longest topic accepted from the broker (AWS IoT's limit too)

_RX = const(64)  # read-ahead buffer
_WBUF = const(1024)  # write buffer for publishes queued with wait=False
_TICK = const(50)  # timers (resend, keepalive) are checked this often, in ms
_IN = select.POLLIN
_OUT = select.POLLOUT

# One bit per event reason: each is recorded once until the connection has
# been stable for stable_ms (see _event).
_REASONS = ("bad_length", "too_big", "bad_topic", "bad_packet", "unexpected", "unknown_puback", "no_memory",
            "qos2", "truncated", "slow_packet", "bad_connack", "refused", "cert_expired",
            "cert_not_yet_valid", "hostname_mismatch", "cert_untrusted", "cert_invalid", "handshake")


class MQTTError(Exception):
    """The connection failed; the client is disconnected. .reason is a short
    code, .kind the security event kind ("mqtt", "tls") or None."""

    kind = None

    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason
        self.detail = detail


class ProtocolError(MQTTError):
    kind = "mqtt"


class TLSError(MQTTError):
    kind = "tls"


class Refused(MQTTError):
    kind = "mqtt"

    def __init__(self, code):
        super().__init__("refused_%d" % code, "CONNACK return code")
        self.code = code


class Timeout(MQTTError):
    pass


class ConnectionLost(MQTTError):
    pass


def _rand_below(n):
    # os.urandom is the hardware RNG on an ESP32.
    return int.from_bytes(os.urandom(4), "big") % n if n > 0 else 0


class Backoff:
    """Exponential backoff with jitter: the n-th delay (from 0) is drawn from
    [d/2, d), d = min(cap_ms, base_ms * 2**n). The lower half is fixed so the
    delays really grow; the random half spreads a fleet's reconnects after a
    broker restart. rand(n) -> int in [0, n) is injectable for tests."""

    def __init__(self, base_ms=1000, cap_ms=300000, rand=_rand_below):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.rand = rand
        self.n = 0

    def next_ms(self):
        d = self.base_ms
        for _ in range(self.n):
            d *= 2
            if d >= self.cap_ms:
                break
        d = min(d, self.cap_ms)
        self.n += 1
        return d // 2 + self.rand(d - d // 2)

    def reset(self):
        self.n = 0


def _tls_reason(msg):
    # MicroPython raises ValueError with mbedTLS's verify text (one line per
    # failed check) when the broker's certificate fails verification. Not
    # from our CA outranks everything else about the certificate.
    if "not correctly signed by the trusted CA" in msg:
        return "cert_untrusted"
    if "validity has expired" in msg:
        return "cert_expired"
    if "validity starts in the future" in msg:
        return "cert_not_yet_valid"
    if "Common Name" in msg:
        return "hostname_mismatch"
    return "cert_invalid"


def _b(s):
    return s.encode() if isinstance(s, str) else s


def utf8_ok(b):
    """True if b is well-formed UTF-8 as RFC 3629 defines it (section 4's
    syntax: no overlong forms, no surrogates D800-DFFF, nothing above
    U+10FFFF) without U+0000: what MQTT 3.1.1 requires of a topic
    [MQTT-1.5.3-1, -2]. (MicroPython's own decode checks only the shape of
    each sequence, py/unicode.c utf8_check, so overlong forms and
    surrogates pass it.)"""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            if not c:
                return False
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False  # a continuation byte, C0/C1 (overlong) or F5-FF
        k = 1 if c < 0xE0 else 2 if c < 0xF0 else 3  # bytes after the lead
        # The second byte's range: narrower after E0, F0 (overlong forms),
        # ED (surrogates) and F4 (past U+10FFFF).
        lo = 0xA0 if c == 0xE0 else 0x90 if c == 0xF0 else 0x80
        hi = 0x9F if c == 0xED else 0x8F if c == 0xF4 else 0xBF
        if i + k >= n or not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if b[j] & 0xC0 != 0x80:
                return False
        i += k + 1
    return True


class MQTTClient:
    # The largest packet accepted from the broker (STYLE rule 1); the receive
    # buffer has this size. Override per client with max_packet=.
    max_packet = 4096
    max_inflight = 8  # unacknowledged QoS 1 publishes before publish() waits
    max_subs = 8

    def __init__(self, client_id, server, port, ssl_context, server_hostname=None, keepalive=60,
                 timeout_s=10, max_packet=None, max_inflight=None, user=None, password=None,
                 backoff=None, stable_ms=60000, connect_timeout_s=None):
        if ssl_context is None or getattr(ssl_context, "verify_mode", None) != ssl.CERT_REQUIRED:
            # No plaintext and no unverified TLS: not even as a fallback.
            raise ValueError("an SSLContext with verify_mode CERT_REQUIRED is required")
        self.client_id = _b(client_id)
        self.server = server
        self.port = port
        self.ctx = ssl_context
        self.hostname = server_hostname or server
        self.keepalive = keepalive
        self.timeout_ms = int(timeout_s * 1000)
        # The TLS handshake (ECDHE, two signatures) may need longer than a
        # packet: about a second on an ESP32.
        self.connect_ms = int((connect_timeout_s or timeout_s) * 1000)
        if max_packet:
            self.max_packet = max_packet
        if max_inflight:
            self.max_inflight = max_inflight
        self.user = user
        self.password = password
        self.backoff = backoff or Backoff()
        self.stable_ms = stable_ms
        self.clean_session = True
        self.last_error = None  # the MQTTError that ended the last connection
        self.sock = None
        self._poll = None
        self._buf = bytearray(self.max_packet)
        self._mv = memoryview(self._buf)
        # Read-ahead: mbedTLS hands out one record per read, and a PUBACK or
        # PINGRESP is one record, so a packet this small costs one read.
        self._rx = bytearray(_RX)
        self._rxv = memoryview(self._rx)
        self._rp = self._rn = 0  # unread bytes are _rx[_rp:_rn]
        self._out = bytearray(_WBUF)
        self._outv = memoryview(self._out)
        self._on = 0  # queued bytes are _out[:_on]
        self._tk = None  # the last publish topic as given, and as bytes
        self._tb = b""
        self.pid = 0
        self.cb = None
        self._view = False
        self.ack_cb = None
        self.lw = None
        self._inflight = []  # [pid, packet, sent_ms, sends], oldest first
        self._fresh = 0  # ids issued since the window was last seen empty
        self._subs = []  # (topic, qos) to restore when the session is new
        self._dup_acked = []  # resent ids already acked: a second PUBACK is expected
        self._logged = 0  # bit per _REASONS entry recorded during this outage
        self._next_try = time.ticks_ms()
        self._up_since = None
        self._last_tx = 0
        self._last_rx = 0
        self._due = 0
        self._ping_at = None

    # --- settings ------------------------------------------------------------
    def set_callback(self, f, view=False):
        """f(topic, msg) for each PUBLISH received (bytes copies). A QoS 1
        message is acknowledged after f returns, so one that f did not
        finish (exception, reset) comes again. view=True: msg is instead a
        writable memoryview of the receive buffer, valid only until f returns
        (no copy of a message up to max_packet long on the heap)."""
        self.cb = f
        self._view = view

    def set_ack_callback(self, f):
        """f(pid) when the broker acknowledges a QoS 1 publish."""
        self.ack_cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        """Published by the broker if the connection drops without DISCONNECT
        (the agent's offline event on <prefix>/<id>/state). Set before connect."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        self.lw = (_b(topic), _b(msg), retain, qos)

    @property
    def connected(self):
        return self.sock is not None

    def inflight(self):
        """Number of QoS 1 publishes not yet acknowledged."""
        return len(self._inflight)

    # --- time ----------------------------------------------------------------
    def _deadline(self, ms=None):
        return time.ticks_add(time.ticks_ms(), self.timeout_ms if ms is None else ms)

    def _wait(self, ev, deadline, cap_ms=1000):
        """Wait for ev on the socket, at most cap_ms and not past deadline.
        False once the deadline has passed."""
        left = time.ticks_diff(deadline, time.ticks_ms())
        if left <= 0:
            return False
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock, ev)
        else:
            self._poll.modify(self.sock, ev)
        self._poll.poll(min(left, cap_ms))
        return True

    # --- wire ----------------------------------------------------------------
    def _attach(self, sock):
        # The connection's stream: a TLS socket, or (fuzzing) any object with
        # readinto/write that never returns None.
        self.sock = sock
        self._poll = None
        self._rp = self._rn = self._on = 0
        self._ping_at = None
        self._last_tx = self._last_rx = self._due = time.ticks_ms()

    def _close(self):
        s = self.sock
        self.sock = None
        self._poll = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    def _write(self, mv, deadline, handshake=False):
        n = len(mv)
        sent = 0
        while sent < n:
            try:
                k = self.sock.write(mv[sent:])
            except OSError as e:
                raise ConnectionLost("write", str(e.args[0]))
            if k is None:
                # During the TLS handshake mbedTLS mostly waits for the broker.
                if not self._wait(_IN if handshake else _OUT, deadline, 20 if handshake else 1000):
                    raise Timeout("write")
            else:
                sent += k
        self._last_tx = time.ticks_ms()

    def _queue(self, pkt):
        # Deferred send (publish with wait=False): packets share one write,
        # so one TLS record and one system call carry several.
        n = len(pkt)
        if self._on + n > _WBUF:
            self._flush()
            if n > _WBUF:
                self._write(memoryview(pkt), self._deadline())
                return
        self._out[self._on:self._on + n] = pkt
        self._on += n

    def _flush(self):
        if self._on:
            n = self._on
            self._on = 0
            self._write(self._outv[:n], self._deadline())

    def _send(self, pkt, deadline, handshake=False):
        # Now, after what is queued (packets leave in order).
        if self._on:
            self._queue(pkt)
            self._flush()
        else:
            self._write(memoryview(pkt), deadline, handshake)

    def _fill(self, deadline):
        """Refill the empty read-ahead buffer: -> bytes read (0: the broker
        closed), or None if nothing came by deadline (None: do not wait)."""
        while True:
            try:
                k = self.sock.readinto(self._rxv)
            except OSError as e:
                raise ConnectionLost("read", str(e.args[0]))
            if k is not None:
                self._rp = 0
                self._rn = k
                return k
            if deadline is None or not self._wait(_IN, deadline):
                return None

    def _byte(self, deadline):
        # The next byte of a packet that has started.
        if self._rp == self._rn:
            k = self._fill(deadline)
            if k is None:
                raise ProtocolError("slow_packet", "packet not complete in %d ms" % self.timeout_ms)
            if not k:
                raise ProtocolError("truncated", "connection closed inside a packet")
        b = self._rx[self._rp]
        self._rp += 1
        return b

    def _recv(self, mv, n, deadline):
        """Fill mv[:n] before deadline: the rest of a packet that has started,
        so a close is a truncation and a timeout a slow drip."""
        got = min(self._rn - self._rp, n)
        if got:
            mv[:got] = self._rxv[self._rp:self._rp + got]
            self._rp += got
        while got < n:
            try:
                k = self.sock.readinto(mv[got:n])
            except OSError as e:
                raise ConnectionLost("read", str(e.args[0]))
            if k is None:
                if not self._wait(_IN, deadline):
                    raise ProtocolError("slow_packet", "packet not complete in %d ms" % self.timeout_ms)
            elif k == 0:
                raise ProtocolError("truncated", "connection closed inside a packet")
            else:
                got += k

    def _read_packet(self, wait_ms):
        """Read one packet into self._buf: -> (first byte, length), or None if
        no packet started within wait_ms."""
        if self._rp == self._rn:
            k = self._fill(None)
            if k is None:
                if wait_ms <= 0:
                    return None
                end = self._deadline(wait_ms)
                while k is None:
                    # Poll first: the read just found nothing.
                    if not self._wait(_IN, end):
                        return None
                    k = self._fill(None)
            if not k:
                raise ConnectionLost("closed by broker")
        op = self._rx[self._rp]
        self._rp += 1
        # From the first byte on, the whole packet has one deadline.
        deadline = self._deadline()
        n = 0
        shift = 0
        while True:
            c = self._byte(deadline)
            n |= (c & 0x7F) << shift
            if not c & 0x80:
                break
            shift += 7
            if shift == 28:
                raise ProtocolError("bad_length", "remaining length longer than 4 bytes")
        if shift and not c:
            raise ProtocolError("bad_length", "remaining length not minimally encoded")
        if n > self.max_packet:
            # Never read (or allocate) what the broker claims: drop instead.
            raise ProtocolError("too_big", "%d bytes over the %d cap" % (n, self.max_packet))
        if n:
            self._recv(self._mv, n, deadline)
        self._last_rx = time.ticks_ms()
        return op, n

    def _puback(self):
        # The packet a publisher reads most, a whole PUBACK (0x40, remaining
        # length 2, packet id), taken straight from the read-ahead buffer
        # when it is all there: what _read_packet and _handle would accept,
        # without their general path. Anything else is left to them.
        rp = self._rp
        if self._rn - rp < 4:
            return False
        rx = self._rx
        if rx[rp] != _PUBACK or rx[rp + 1] != 2:
            return False
        self._rp = rp + 4
        self._last_rx = time.ticks_ms()
        self._acked((rx[rp + 2] << 8) | rx[rp + 3])
        return True

    @staticmethod
    def _packet(ptype, n):
        """A packet buffer with its fixed header (type byte, remaining length
        of 1-4 bytes) written: -> (buffer, where the n body bytes go)."""
        if n > _MAX_REMAINING:
            raise ValueError("packet too long for MQTT")
        hl = 2 if n < 0x80 else 3 if n < 0x4000 else 4 if n < 0x200000 else 5
        pkt = bytearray(hl + n)
        pkt[0] = ptype
        i = 1
        while True:
            b = n & 0x7F
            n >>= 7
            pkt[i] = b | 0x80 if n else b
            i += 1
            if not n:
                return pkt, i

    # --- packets from the broker ---------------------------------------------
    def _handle(self, op, n):
        t = op & 0xF0
        buf = self._buf
        if t == _PUBLISH:
            qos = (op >> 1) & 3
            if qos == 3:
                raise ProtocolError("bad_packet", "PUBLISH with QoS 3")
            if qos == 2:
                raise ProtocolError("qos2", "QoS 2 was never requested")
            if n < 2:
                raise ProtocolError("bad_topic", "PUBLISH shorter than its topic length")
            tl = (buf[0] << 8) | buf[1]
            pos = 2 + tl
            if tl == 0 or tl > _MAX_TOPIC or pos + (2 if qos else 0) > n:
                raise ProtocolError("bad_topic", "topic length %d in a %d-byte packet" % (tl, n))
            try:
                # Copies for the callback (umqtt gives bytes). The payload
                # can be max_packet long: on a fragmented heap there may be no
                # block for it, and that must end the connection, not the
                # caller (QoS 1 comes again after the reconnect).
                topic = bytes(self._mv[2:pos])
                msg = self._mv[pos + (2 if qos else 0):n]
                if not self._view:
                    msg = bytes(msg)
            except MemoryError:
                raise ProtocolError("no_memory", "no room for a %d-byte message" % n)
            if b"+" in topic or b"#" in topic or not utf8_ok(topic):
                raise ProtocolError("bad_topic", "wildcard, NUL or not UTF-8 in a PUBLISH topic")
            if op & _DUP and not qos:
                raise ProtocolError("bad_packet", "QoS 0 PUBLISH with DUP set")  # [MQTT-3.3.1-2]
            pid = 0
            if qos:
                pid = (buf[pos] << 8) | buf[pos + 1]
                if not pid:
                    raise ProtocolError("bad_packet", "PUBLISH with packet id 0")
                pos += 2
            if self.cb:
                self.cb(topic, msg)
                if self.sock is None:
                    # The callback's own publish failed and dropped the
                    # connection; the broker will send this message again.
                    raise ConnectionLost("dropped in the callback")
            if qos:
                self._send(b"\x40\x02" + bytes((pid >> 8, pid & 0xFF)), self._deadline())
            return _PUBLISH
        if t == _PUBACK:
            if op != _PUBACK or n != 2:
                raise ProtocolError("bad_packet", "PUBACK 0x%02x of %d bytes" % (op, n))
            self._acked((buf[0] << 8) | buf[1])
            return _PUBACK
        if t == _SUBACK:
            if op != _SUBACK or n < 3:
                raise ProtocolError("bad_packet", "SUBACK 0x%02x of %d bytes" % (op, n))
            return _SUBACK
        if t == _PINGRESP:
            if op != _PINGRESP or n:
                raise ProtocolError("bad_packet", "PINGRESP 0x%02x of %d bytes" % (op, n))
            self._ping_at = None
            return _PINGRESP
        raise ProtocolError("unexpected", "packet type 0x%02x" % op)

    def _acked(self, pid):
        inf = self._inflight
        for i in range(len(inf)):
            e = inf[i]
            if e[0] == pid:
                inf.pop(i)
                if e[3] > 1:
                    # Resent with DUP: the broker may acknowledge both copies.
                    self._dup_acked.append(pid)
                    if len(self._dup_acked) > self.max_inflight:
                        self._dup_acked.pop(0)
                if self.ack_cb:
                    self.ack_cb(pid)
                return
        if pid in self._dup_acked:
            self._dup_acked.remove(pid)
            return
        raise ProtocolError("unknown_puback", "PUBACK for packet id %d never sent" % pid)

    # --- timers --------------------------------------------------------------
    def _tick(self):
        # The timers every _TICK ms, not per packet: scanning the window for
        # each PUBACK would cost more than reading it.
        now = time.ticks_ms()
        if time.ticks_diff(now, self._due) >= 0:
            self._due = time.ticks_add(now, _TICK)
            self._timers()

    def _timers(self):
        now = time.ticks_ms()
        if self._ping_at is not None:
            # Any packet read since the PINGREQ proves the broker alive: a
            # PINGRESP queued behind a burst of PUBLISHes is not a dead link.
            if time.ticks_diff(self._last_rx, self._ping_at) > 0:
                self._ping_at = None
            elif time.ticks_diff(now, self._ping_at) >= self.timeout_ms:
                raise Timeout("keepalive", "no packet in %d ms after PINGREQ" % self.timeout_ms)
        for e in self._inflight:
            if time.ticks_diff(now, e[2]) >= self.timeout_ms:
                if e[3] >= 2:
                    raise Timeout("puback", "no PUBACK for packet id %d" % e[0])
                self._resend(e)
        half = self.keepalive * 500
        if half and self._ping_at is None and (time.ticks_diff(now, self._last_tx) >= half
                                               or time.ticks_diff(now, self._last_rx) >= half):
            self._ping()

    def _resend(self, e):
        e[1][0] |= _DUP
        self._send(e[1], self._deadline())
        e[2] = time.ticks_ms()
        e[3] += 1

    def _ping(self):
        self._send(b"\xc0\x00", self._deadline())
        self._ping_at = time.ticks_ms()

    # --- failure handling ------------------------------------------------------
    def _event(self, e):
        if not e.kind:
            return
        r = e.reason
        bit = 1 << _REASONS.index("refused" if r.startswith("refused") else r)
        if self._logged & bit:
            return
        self._logged |= bit
        events.record(e.kind, r, detail=e.detail)

    def _fail(self, e):
        # Any MQTTError: the connection is unusable. Close it, log the event
        # and schedule the next attempt. A connection that stayed up for
        # stable_ms ended the outage: the backoff and the once-per-outage
        # event filter start over.
        self._close()
        self.last_error = e
        now = time.ticks_ms()
        if self._up_since is not None and time.ticks_diff(now, self._up_since) >= self.stable_ms:
            self.backoff.reset()
            self._logged = 0
        self._up_since = None
        self._next_try = time.ticks_add(now, self.backoff.next_ms())
        self._event(e)

    def _need(self):
        if self.sock is None:
            raise ConnectionLost("not connected")

    # --- the umqtt.simple surface ----------------------------------------------
    def connect(self, clean_session=True):
        """TCP, TLS (certificate and host name verified) and CONNECT/CONNACK
        within connect_timeout_s. Then resends unacknowledged QoS 1 publishes with DUP
        and, when the broker has no session, the subscriptions made before.
        Returns session_present."""
        self._close()
        self.clean_session = clean_session
        deadline = self._deadline(self.connect_ms)
        try:
            sp = self._connect(clean_session, deadline)
            for e in self._inflight:
                # Sends count per connection: the old one's PUBACK cannot come.
                # Resent in order, as one write.
                e[1][0] |= _DUP
                e[2] = time.ticks_ms()
                e[3] = 1
                self._queue(e[1])
            self._flush()
            if not sp:
                for topic, qos in self._subs:
                    self._subscribe(topic, qos, deadline)
        except MQTTError as e:
            self._fail(e)
            raise
        self._up_since = time.ticks_ms()
        return sp

    def _connect(self, clean_session, deadline):
        # DNS resolution has no timeout in MicroPython: use an address or a
        # resolver on the local network.
        try:
            ai = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
            s = socket.socket(ai[0], socket.SOCK_STREAM)
        except OSError as e:
            raise ConnectionLost("connect", "%s: %s" % (self.server, e.args[0]))
        try:
            s.settimeout(self.connect_ms / 1000)
            s.connect(ai[-1])
            s.setblocking(False)
            tls = self.ctx.wrap_socket(s, server_hostname=self.hostname, do_handshake_on_connect=False)
        except OSError as e:
            s.close()
            raise ConnectionLost("connect", str(e.args[0]))
        self._attach(tls)
        flags = 0x02 if clean_session else 0
        will = b""
        if self.lw:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            will = self._str(topic) + self._str(msg)
        cred = b""
        if self.user is not None:
            flags |= 0x80
            cred = self._str(_b(self.user))
            if self.password is not None:
                flags |= 0x40
                cred += self._str(_b(self.password))
        ka = self.keepalive
        body = b"\x00\x04MQTT\x04" + bytes((flags, ka >> 8, ka & 0xFF)) + self._str(self.client_id) + will + cred
        try:
            # The first write runs the TLS handshake.
            pkt, i = self._packet(_CONNECT, len(body))
            pkt[i:] = body
            self._send(pkt, deadline, handshake=True)
        except ValueError as e:
            msg = str(e).strip()
            raise TLSError(_tls_reason(msg), msg.split("\n")[0])
        except ConnectionLost as e:
            raise TLSError("handshake", e.detail)
        except Timeout:
            raise TLSError("handshake", "not complete in %d ms" % self.connect_ms)
        left = time.ticks_diff(deadline, time.ticks_ms())
        p = self._read_packet(max(left, 1))
        if p is None:
            raise Timeout("connack", "no CONNACK in %d ms" % self.connect_ms)
        return self._connack(p[0], p[1], clean_session)

    def _connack(self, op, n, clean_session):
        # The CONNACK in self._buf -> session_present.
        if op != _CONNACK or n != 2 or self._buf[0] > 1:
            raise ProtocolError("bad_connack", "0x%02x of %d bytes" % (op, n))
        if self._buf[1]:
            raise Refused(self._buf[1])
        if clean_session and self._buf[0]:
            # [MQTT-3.2.2-1]: a clean session has no stored state. Believing
            # the flag would skip restoring the subscriptions.
            raise ProtocolError("bad_connack", "session present answering a clean session")
        return bool(self._buf[0] & 1)

    @staticmethod
    def _str(s):
        n = len(s)
        if n > 0xFFFF:
            raise ValueError("string too long for MQTT")
        return bytes((n >> 8, n & 0xFF)) + s

    def disconnect(self):
        """Send DISCONNECT (the broker then drops the last will) and close."""
        if self.sock is None:
            return
        try:
            self._send(b"\xe0\x00", self._deadline(1000))
        except MQTTError:
            pass
        self._close()

    def ping(self):
        self._need()
        try:
            self._ping()
        except MQTTError as e:
            self._fail(e)
            raise

    def _next_pid(self):
        # Ids are issued in turn, so every id in flight was issued since the
        # window was last seen empty: while that is fewer than 65535 ids ago,
        # the next one cannot be in flight. Only a window that has not
        # drained for that long needs the search.
        inf = self._inflight
        if not inf:
            self._fresh = 0
        self._fresh += 1
        while True:
            self.pid = self.pid % 0xFFFF + 1
            if self._fresh < 0xFFFF:
                return self.pid
            for e in inf:
                if e[0] == self.pid:
                    break
            else:
                return self.pid

    def publish(self, topic, msg, retain=False, qos=0, wait=True):
        """Send a PUBLISH; returns the packet id (0 for QoS 0). QoS 1 keeps a
        copy until the PUBACK: resent with DUP after timeout_s and after a
        reconnect.

        wait=True (umqtt's behaviour): sent now; QoS 1 returns after its
        PUBACK. wait=False (pipelining): queued, to share one write with the
        messages around it, once an in-flight slot is free; it goes out when
        the write buffer fills or with the next call that reads (check_msg,
        wait_msg, sync, maintain, a waiting publish). The PUBACK is reported
        to set_ack_callback's function."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        if topic is not self._tk:
            # Checked and encoded once per topic, not per message (str and
            # bytes cannot change behind our back).
            t = topic.encode() if isinstance(topic, str) else bytes(topic)
            if not t or b"+" in t or b"#" in t:
                raise ValueError("publish topic must be non-empty without wildcards")
            if isinstance(topic, (str, bytes)):
                self._tk = topic
            self._tb = t
        topic = self._tb
        tl = len(topic)
        self._need()
        try:
            if qos and len(self._inflight) >= self.max_inflight:
                # Window full: wait for a PUBACK, then take every packet that
                # has already arrived, so the slots they free fill up as one
                # batch (one write) rather than one write per PUBACK.
                while len(self._inflight) >= self.max_inflight:
                    self._service(self.timeout_ms)
                for _ in range(self.max_inflight):
                    if not self._puback() and self._service(0) is None:
                        break
            pkt, i = self._packet(_PUBLISH | (qos << 1) | (1 if retain else 0), 2 + tl + 2 * qos + len(msg))
            pkt[i] = tl >> 8
            pkt[i + 1] = tl & 0xFF
            pkt[i + 2:i + 2 + tl] = topic
            i += 2 + tl
            pid = 0
            if qos:
                pid = self._next_pid()
                pkt[i] = pid >> 8
                pkt[i + 1] = pid & 0xFF
                i += 2
            pkt[i:] = msg
            if wait:
                self._send(pkt, self._deadline())
            else:
                self._queue(pkt)
            if qos:
                self._inflight.append([pid, pkt, time.ticks_ms(), 1])
                if wait:
                    while self._has(pid):
                        self._service(self.timeout_ms)
            return pid
        except MQTTError as e:
            self._fail(e)
            raise

    def _has(self, pid):
        for e in self._inflight:
            if e[0] == pid:
                return True
        return False

    def sync(self):
        """Wait until every QoS 1 publish is acknowledged (each within its
        PUBACK deadline)."""
        self._need()
        try:
            while self._inflight:
                self._service(self.timeout_ms)
        except MQTTError as e:
            self._fail(e)
            raise

    def subscribe(self, topic, qos=0):
        """SUBSCRIBE and wait for the SUBACK: returns the granted QoS, 0x80 if
        the broker refused. Accepted subscriptions are restored after a
        reconnect that starts a new session."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        topic = _b(topic)
        self._need()
        try:
            g = self._subscribe(topic, qos, self._deadline())
        except MQTTError as e:
            self._fail(e)
            raise
        if g != 0x80 and (topic, qos) not in self._subs:
            if len(self._subs) >= self.max_subs:
                raise ValueError("too many subscriptions")
            self._subs.append((topic, qos))
        return g

    def _subscribe(self, topic, qos, deadline):
        pid = self._next_pid()
        body = bytes((pid >> 8, pid & 0xFF)) + self._str(topic) + bytes((qos,))
        pkt, i = self._packet(_SUBSCRIBE, len(body))
        pkt[i:] = body
        self._send(pkt, deadline)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                raise Timeout("suback", "no SUBACK in %d ms" % self.timeout_ms)
            p = self._read_packet(left)
            if p is None:
                continue
            op, n = p
            if self._handle(op, n) == _SUBACK:
                b = self._buf
                if (b[0] << 8) | b[1] != pid or n != 3:
                    raise ProtocolError("bad_packet", "SUBACK for another request")
                if b[2] not in (0, 1, 0x80):
                    raise ProtocolError("bad_packet", "SUBACK code 0x%02x" % b[2])
                return b[2]

    def _service(self, wait_ms):
        # Handle one packet if one starts within wait_ms (in slices, so the
        # timers run).
        self._flush()
        end = self._deadline(wait_ms)
        while True:
            self._tick()
            if self._puback():
                return _PUBACK
            left = time.ticks_diff(end, time.ticks_ms())
            p = self._read_packet(min(left, 1000))
            if p is not None:
                op = self._handle(*p)
                if op == _SUBACK:
                    raise ProtocolError("unexpected", "SUBACK with no SUBSCRIBE pending")
                return op
            if left <= 1000:
                return None

    def wait_msg(self, timeout_ms=None):
        """Handle the next packet, waiting at most timeout_ms (default
        timeout_s) for it to start. Returns its type, or None."""
        self._need()
        try:
            return self._service(self.timeout_ms if timeout_ms is None else timeout_ms)
        except MQTTError as e:
            self._fail(e)
            raise

    def check_msg(self):
        """Handle every packet that has already arrived (never waits for one
        to start), then keepalive and resends. Returns the last packet type or
        None."""
        self._need()
        last = None
        try:
            for _ in range(16):  # a flooding broker cannot starve the caller
                op = self._service(0)
                if op is None:
                    break
                last = op
        except MQTTError as e:
            self._fail(e)
            raise
        return last

    # --- staying connected ---------------------------------------------------
    def maintain(self):
        """Call from the main loop; never raises MQTTError and never blocks
        longer than one connect (connect_timeout_s) or one packet
        (timeout_s). Services the connection, or reconnects once the backoff
        delay after the last failure has passed. Returns True while
        connected."""
        try:
            if self.sock is not None:
                self.check_msg()
            elif time.ticks_diff(self._next_try, time.ticks_ms()) <= 0:
                self.connect(self.clean_session)
        except MQTTError:
            pass  # closed, logged and the next attempt scheduled by _fail
        return self.sock is not None

    def reconnect(self, attempts=0, sleep_ms=time.sleep_ms):
        """Connect, sleeping out the backoff delay left by the last failure
        before each attempt; attempts=0 means until it works. Returns
        session_present; raises the last MQTTError when out of attempts."""
        i = 0
        while True:
            wait = time.ticks_diff(self._next_try, time.ticks_ms())
            if wait > 0:
                sleep_ms(wait)
            try:
                return self.connect(self.clean_session)
            except MQTTError:
                i += 1
                if attempts and i >= attempts:
                    raise
