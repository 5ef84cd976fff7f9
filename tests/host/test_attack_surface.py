"""Attack surface of the running agent: while it runs (the `ictl run` flow: a
virtual board against the run's own mosquitto), the device process holds no
listening socket and no raw socket; its only network connection is one
outbound TCP connection to the port the run's broker listens on, a port that
speaks TLS only, and its only UDP socket the one SNTP exchange with the time
server named in its settings, before it connects (ironclad.clock). Read from /proc (psutil is not pinned): the process's
socket inodes in /proc/<pid>/fd, their state and addresses in
/proc/<pid>/net/{tcp,tcp6,udp,udp6,raw,raw6}.

Nothing here depends on what the agent publishes or how: only on the first
reading reaching the console, which `ictl run` prints as a line naming the
telemetry topic."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from mphelp import ROOT

TCP_LISTEN = 0x0A
TCP_ESTABLISHED = 0x01
TCP_SYN_SENT = 0x02  # connecting, after a reboot
TCP_FIN_WAIT1 = 0x04  # closing, before a reboot
TCP_CLOSE_WAIT = 0x08


def _procs_with_env(needle):
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle.encode() in env:
            out.append(int(pid))
    return out


def _procs_with_arg(needle):
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if needle.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


def _socket_inodes(pid):
    inodes = set()
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:  # the process is gone (a device reboot, a finished mpremote)
        return inodes
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _addr(hexaddr):
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # /proc prints IPv6 as four little-endian 32-bit words
        host = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return host, int(port, 16)


def _sockets(pid):
    """(kind, state, local, remote) of every inet socket the process owns."""
    mine = _socket_inodes(pid)
    found = []
    for kind in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            with open("/proc/%d/net/%s" % (pid, kind)) as f:
                table = f.readlines()[1:]
        except OSError:
            return []
        for line in table:
            cols = line.split()
            if int(cols[9]) in mine:
                found.append((kind, int(cols[3], 16), _addr(cols[1]), _addr(cols[2])))
    return found


def _listening_ports(pids):
    ports = set()
    for pid in pids:
        for kind, state, local, _ in _sockets(pid):
            if kind.startswith("tcp") and state == TCP_LISTEN:
                ports.add(local)
    return ports


def test_running_agent_listens_nowhere_and_talks_only_tls_to_its_broker(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "ictl", "run", "--dir", run_dir, "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools")))
    lines = []
    reading = threading.Event()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"[ /]telemetry\b", line) and not line.startswith("run:"):
                reading.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert reading.wait(150), "no reading from the agent:\n" + "".join(lines)
        needle = "ESPSIM_DIR=" + os.path.join(run_dir, "device")
        brokers = [p for p in _procs_with_arg(run_dir) if p != proc.pid and p not in _procs_with_env(needle)]
        broker_ports = _listening_ports(brokers)
        assert broker_ports, "the run's broker listens nowhere?"
        # Sample over several publish intervals. The device process may be
        # replaced meanwhile (the run reboots it, updates it): look it up each time.
        samples = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(1 for s in samples if len(s) == 1) < 5:
            # (two for a moment when a reboot's new process starts before the old one is reaped)
            for pid in _procs_with_env(needle):
                samples.append(_sockets(pid))
            time.sleep(0.3)
        # The port the device talks to speaks TLS only: plaintext MQTT gets no CONNACK.
        host, port = sorted(broker_ports)[0]
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test")
            try:
                answer = s.recv(4)
            except (socket.timeout, ConnectionResetError):
                answer = b""
        assert not answer.startswith(b"\x20"), answer
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    m = re.search(r"time server \(SNTP\) on ([\d.]+):(\d+)", "".join(lines))
    assert m, "".join(lines)
    ntp = (m.group(1), int(m.group(2)))
    assert sum(1 for socks in samples if len(socks) == 1) >= 5, samples  # it was online
    for socks in samples:
        tcp = [s for s in socks if s[0].startswith("tcp")]
        udp = [s for s in socks if s[0].startswith("udp")]
        assert not [s for s in tcp if s[1] == TCP_LISTEN], socks  # no listener
        assert len(tcp) + len(udp) == len(socks), socks  # no raw socket
        assert len(udp) <= 1 and all(r == ntp for _, _, _, r in udp), (socks, ntp)  # SNTP, to that server only
        assert len(tcp) <= 1, socks  # one connection at most
        for kind, state, local, remote in tcp:
            assert remote in broker_ports, (socks, broker_ports)  # outbound, to the broker only
            assert state in (TCP_ESTABLISHED, TCP_SYN_SENT, TCP_FIN_WAIT1, TCP_CLOSE_WAIT), socks
