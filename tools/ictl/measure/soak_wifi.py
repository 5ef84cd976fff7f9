"""Wi-Fi fault campaign: the agent on a virtual board (the app's 64 KiB heap,
mosquitto with mutual TLS, the fleet console) against each fault of its
simulated access point (ictl.wifisim, firmware/unix/board/network.py):

  wrong_passphrase  the board boots, the AP refuses its passphrase; later the
                    AP takes it again
  ap_absent         the board boots with its AP out of range; the AP appears
  link_lost         the AP goes away while the agent is connected, comes back
  ap_back_later     an outage several connection attempts long (backoff)
  flapping          the AP drops and returns three times in a row
  slow_association  the AP takes seconds to associate (within the limit)

A case passes when the agent ends connected (the console opens a reading
sent after the fault ended), every reading spooled meanwhile was delivered,
the board neither crashed nor reset (a power-cycle the case makes itself
aside), and, for a fault that kept the link down past a connection attempt,
the device recorded one network event naming it.

`make test` runs a slice (tests/host/test_wifi.py)."""
import contextlib
import os
import re
import tempfile
import time

from ictl import ToolError, broker as fleet_broker, image as app_image
from ictl.sim import factory
from ictl.sim import wifisim
from ictl.sim import board as vboard
from ictl import console as fleet_console
from ictl.sim import device as sim_device
from ictl.cli.run import Keys, boot_lines, build_app, log_size, provision, wait_log

CASES = ("wrong_passphrase", "ap_absent", "link_lost", "ap_back_later", "flapping", "slow_association")
WIFI_MS = 1500  # the agent's connection attempt limit in the lab (NVS ic_agent/wifi_ms; 20 s by default)
INTERVAL_S = 1


def add_args(p):
    p.add_argument("--wifi-cases", default=",".join(CASES), help="Wi-Fi faults to run (default: all: %s)" % ",".join(CASES))
    p.add_argument("--wifi-timeout", type=float, default=60, help="seconds to wait for each step (default 60)")


def settings_code(**nvs):
    return "import esp32\nn = esp32.NVS('ic_agent')\n%sn.commit()\n" % "".join(
        "n.set_i32(%r, %d)\n" % kv for kv in sorted(nvs.items()))


class Lab:
    """A broker, a provisioned virtual board with its simulated AP, and the
    fleet console. Use as a context manager."""

    def __init__(self, root, timeout=60, ntp=None, operators=fleet_broker.DEFAULT_OPERATORS, factory_flash=None, **nvs):
        """ntp: the time server ("host:port") the board is provisioned with;
        operators: the broker's operator identities (an update rollout needs
        ictl.update.UPDATER_ID); factory_flash(devdir): writes what the
        factory flashes beyond the app (a firmware in ota_0) before the
        board first boots; nvs: the agent's settings (ic_agent)."""
        self.root = root
        self.timeout = timeout
        self.ntp = ntp
        self.operators = operators
        self.factory_flash = factory_flash
        self.nvs = dict({"wifi_ms": WIFI_MS, "interval": INTERVAL_S}, **nvs)
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def _start(self):
        st = self.stack
        self.br = st.enter_context(fleet_broker.Broker(os.path.join(self.root, "broker"), operators=self.operators))
        self.keys = keys = Keys(self.root)
        self.devdir = os.path.join(self.root, "device")
        sim_device.create(self.devdir, flash_encryption=True)  # a field board: production
        hwid = sim_device.load(self.devdir)["hwid"]
        v1 = build_app("1.0.0", 1, keys, os.path.join(self.root, "app-v1.img"), hwid)
        factory.trust_device(self.devdir, [(keys.key_id, keys.signing.public_key())])
        factory.flash_image(self.devdir, v1)
        if self.factory_flash:
            self.factory_flash(self.devdir)
        self.b = st.enter_context(vboard.VirtualBoard(self.devdir, heap_kib=vboard.PORT_HEAP_KIB,
                                                      app_heap_kib=vboard.APP_HEAP_KIB))
        self.record = provision(self.b, self.br, keys, self.root, ntp=self.ntp)
        ap = wifisim.read(self.devdir)["aps"][0]
        self.ssid, self.key = ap["ssid"], ap["key"]
        from ictl.provision import Board

        r = Board(self.b.port)._exec(settings_code(**self.nvs))
        if r.returncode:
            raise ToolError("could not set the agent's settings: %s" % (r.stderr or r.stdout)[-200:])
        self.con = fleet_console.Console.for_broker(self.br, keys.fleet, os.path.join(self.root, "console.json"))
        self.con.start()
        st.callback(self.con.stop)
        self.power_cycle()
        self.wait("agent: connected")

    def __exit__(self, *exc):
        self.stack.close()

    # --- the world and the board ---------------------------------------------
    def ap(self, **changes):
        wifisim.set_ap(self.devdir, self.ssid, **changes)

    def world(self, **fields):
        wifisim.set_world(self.devdir, **fields)

    def power_cycle(self):
        self.mark()
        self.expected_resets = self.b.resets + 1
        self.b.proc.kill()
        deadline = time.monotonic() + self.timeout
        while self.b.resets < self.expected_resets:
            if time.monotonic() > deadline:
                raise ToolError("the board did not come back after a power-cycle")
            time.sleep(0.05)

    def mark(self):
        self.since = log_size(self.b)
        self.expected_resets = self.b.resets
        self.drain()

    def lines(self):
        return boot_lines(self.b, self.since)

    def wait(self, needle, timeout=None):
        return wait_log(self.b, self.since, needle, timeout or self.timeout)

    def drain(self):
        n = 0
        while self.con.get(timeout=0) is not None:
            n += 1
        return n

    def reading_after(self, timeout=None):
        """The next reading the console opens (ToolError if none comes)."""
        end = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < end:
            m = self.con.get(timeout=0.2)
            if m is not None and m.kind == "telemetry":
                return m
        raise ToolError("the console received no reading within %ds" % (timeout or self.timeout))

    def _spool_counts(self, text):
        spooled = len(re.findall(r"agent: offline, reading \d+ spooled", text))
        delivered = sum(int(n) for n in re.findall(r"agent: delivered (\d+) spooled readings", text))
        return spooled, delivered

    def verdict(self, event=None):
        """Why this case failed, or None. Waits (up to the timeout) for the
        spool to be delivered: the console may open the first delivered
        reading before the device prints how many it sent."""
        end = time.monotonic() + self.timeout
        while True:
            text = "\n".join(self.lines())
            spooled, delivered = self._spool_counts(text)
            if delivered >= spooled or time.monotonic() > end:
                break
            time.sleep(0.2)
        why = []
        if "agent crash" in text or "event agent failed crash" in text or "Traceback" in text:
            why.append("the agent crashed")
        if self.b.resets != self.expected_resets:
            why.append("the board reset %d times" % (self.b.resets - self.expected_resets))
        if delivered < spooled:
            why.append("%d readings spooled, %d delivered" % (spooled, delivered))
        if event and ("event network failed %s" % event) not in text:
            why.append("no network event %s" % event)
        if event and text.count("event network failed") > 1 + text.count("event network ok link_up"):
            why.append("more than one failure event per outage")
        return "; ".join(why) or None


def _outage(lab, event, restore, wait_event=True):
    if wait_event:
        lab.wait("event network failed %s" % event)
    lab.wait("agent: offline, reading")  # readings go to the spool meanwhile
    restore()
    lab.wait("agent: connected")
    lab.drain()
    lab.reading_after()


def case(lab, name):
    """Run one fault; returns None or why it failed."""
    lab.mark()
    if name == "wrong_passphrase":
        lab.ap(key="not-the-board's-passphrase")
        lab.power_cycle()
        _outage(lab, name, lambda: lab.ap(key=lab.key))
        return lab.verdict("wrong_passphrase")
    if name == "ap_absent":
        lab.ap(up=False)
        lab.power_cycle()
        _outage(lab, name, lambda: lab.ap(up=True))
        return lab.verdict("ap_absent")
    if name == "link_lost":
        lab.ap(up=False)
        _outage(lab, name, lambda: lab.ap(up=True))
        return lab.verdict("link_lost")
    if name == "ap_back_later":
        lab.ap(up=False)
        lab.wait("event network failed link_lost")
        time.sleep(3 * WIFI_MS / 1000)  # several attempts, each given up after its limit
        _outage(lab, name, lambda: lab.ap(up=True), wait_event=False)
        return lab.verdict("link_lost")
    if name == "flapping":
        for _ in range(3):
            since = log_size(lab.b)
            lab.ap(up=False)
            wait_log(lab.b, since, "event network failed link_lost", lab.timeout)
            lab.ap(up=True)
            wait_log(lab.b, since, "event network ok link_up", lab.timeout)
        lab.wait("agent: connected")
        lab.drain()
        lab.reading_after()
        return lab.verdict("link_lost")
    if name == "slow_association":
        lab.ap(assoc_ms=WIFI_MS * 2 // 3)
        lab.power_cycle()
        lab.wait("agent: connected")
        lab.ap(assoc_ms=100)
        lab.drain()
        lab.reading_after()
        return lab.verdict() or ("a failure event for a slow but successful association"
                                 if "event network failed" in "\n".join(lab.lines()) else None)
    raise ToolError("unknown Wi-Fi case %r (have: %s)" % (name, ", ".join(CASES)))


def campaign(names, timeout=60, root=None):
    """{case: None or why it failed}."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="ictl-wifi-", dir=root) as tmp, Lab(tmp, timeout) as lab:
        for name in names:
            try:
                out[name] = case(lab, name)
            except ToolError as e:
                out[name] = str(e)
            if out[name]:
                lab.ap(up=True, key=lab.key, assoc_ms=100)  # the next case starts from a working link
                lab.power_cycle()
                lab.wait("agent: connected")
    return out


def run(fig, args):
    names = [n for n in args.wifi_cases.split(",") if n]
    res = campaign(names, args.wifi_timeout)
    failed = {k: v for k, v in res.items() if v}
    fig.add("wifi_fault_cases", len(res), "cases", "Wi-Fi faults against the agent on a virtual board: %s" % ", ".join(res))
    fig.add("wifi_fault_failures", len(failed), "count",
            "cases where the agent did not end connected with every spooled reading delivered, crashed, reset or "
            "recorded no event (must be 0)%s" % ("" if not failed else ": " + "; ".join("%s: %s" % kv for kv in failed.items())))
    return len(failed)
