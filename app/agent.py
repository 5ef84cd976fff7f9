# The agent: the app that the verified boot runs. It refuses to start any
# network service on a board that is not provisioned, then keeps one mutual-TLS
# MQTT connection to the fleet broker and:
#   * brings up Wi-Fi first (ironclad.net, the technician's credentials),
#     with the radio on before any random draw (ironclad.rng), and starts the
#     hardware watchdog (ironclad.watchdog), fed by its loop; a link drop is
#     handled like a broker drop;
#   * sets the clock (ironclad.clock: SNTP or the floor) before TLS, syncs it
#     again whenever the link comes up (a board that booted without one runs
#     from the floor until then) and every few hours (clock.RESYNC_MS);
#   * publishes a reading every interval, sealed (COSE_Encrypt0) for the fleet;
#     while the broker is out of reach readings go to the spool on flash and
#     are delivered in order, QoS 1, once it is back;
#   * sends the security event log (hash-chained records) to the events topic;
#   * confirms a trial boot once it is healthy (connected and the first
#     message acknowledged), which also raises the anti-rollback floor;
#   * obeys authenticated commands (ironclad.commands) and feeds update
#     messages to the updater (ironclad.update).
import gc
import time

import esp32
import machine

from ironclad import bootstate, clock, commands, events, identity, net, nonce, rng, telemetry, update, watchdog
from ironclad import nvs as _nvs
from ironclad.identity import NotProvisioned
from ironclad.mqtt import MQTTClient, MQTTError
from ironclad.spool import Spool

VERSION = "1"
NVS_NS = "ic_agent"
DEFAULT_INTERVAL_S = 2
TICK_MS = 100
MAX_REPORTS = 8  # update reports waiting to be published


def _tb(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def _settings():
    nvs = _nvs.open(NVS_NS)
    try:
        return nvs, nvs.get_i32("interval")
    except OSError:
        return nvs, DEFAULT_INTERVAL_S


def _temperature():
    # The ESP32 has only raw_temperature(), in Fahrenheit; the S2/S3/C3 and
    # later have mcu_temperature(), in Celsius (ports/esp32/modesp32.c,
    # MicroPython v1.28.0): use what this chip's esp32 module offers.
    if hasattr(esp32, "mcu_temperature"):
        return esp32.mcu_temperature()
    else:
        return round((esp32.raw_temperature() - 32) * 5 / 9)


class Agent:
    def __init__(self, me, resume=True):
        self.me = me
        ks = me._ks
        # Update reports can arise inside the MQTT callback: queued, and
        # published by the loop once the callback has returned.
        self.reports = []
        # First, while the heap is fresh: an interrupted download resumes
        # with buffers from one unfragmented stretch.
        self.updater = update.Updater(me.device_id, ks.get("device_key"), report=self._queue_report)
        if resume:
            self.updater.prepare()
        # Next the other long-lived big blocks (the MQTT receive buffer, the
        # TLS context), before the key agreement's garbage is interleaved
        # with small long-lived objects and no large block is left.
        self.topics = {k: me.topic(k) for k in ("telemetry", "events", "state", "reply", "cmd", "update")}
        self.topics["report"] = me.topic("state/update")
        self._cmd_b = _tb(self.topics["cmd"])
        self._update_b = _tb(self.topics["update"])
        c = MQTTClient(me.device_id, me.host, me.port, me.tls_context(), server_hostname=me.hostname, keepalive=30,
                       max_packet=update.MAX_PACKET)
        c.set_last_will(self.topics["state"], b"offline", retain=True, qos=1)
        c.set_callback(self._on_message, view=True)  # an update chunk is not copied
        self.client = c
        z = telemetry.shared_secret(ks.get("device_key"), me.fleet_data_pub)
        self.counter = nonce.Counter()
        self.sealer = telemetry.Sealer(z, me.device_id, self.counter)
        self.verifier = commands.Verifier(z, me.device_id, self.counter.epoch, me.topic("cmd"))
        z = None
        self.hello = telemetry.hello(ks.get("cert"), self.counter.epoch, self.counter.previous)
        self.spool = Spool()
        self.nvs, self.interval_s = _settings()
        self.seq = 0
        self.online = False
        self.healthy = False
        self.read_now = False
        gc.collect()

    def _queue_report(self, rep):
        # Bounded: a flood of junk on the update topic is one rejection
        # report per message, all made inside the MQTT callback before the
        # loop can publish any (the agent ran out of heap growing this list).
        # The oldest rejection goes first; the fleet learns the newest state.
        q = self.reports
        if len(q) >= MAX_REPORTS:
            for i in range(len(q)):
                if q[i].get("state") == update.REJECTED:
                    q.pop(i)
                    break
            else:
                q.pop(0)
        q.append(rep)

    # --- messages from the broker ---------------------------------------------
    def _on_message(self, topic, msg):
        # Topics are compared as bytes: whatever a broker sends (the client
        # refuses ill-formed UTF-8, but this must not depend on it) is never
        # decoded here, so it cannot raise.
        t = bytes(topic) if isinstance(topic, (bytearray, memoryview)) else _tb(topic)
        if t == self._cmd_b:
            try:
                # (A copy: a reply published from here reuses the receive
                # buffer. Only of what may be a command: a longer message is
                # refused from the view, not copied onto the heap.)
                cmd = self.verifier.open(t, bytes(msg) if len(msg) <= commands.MAX_MESSAGE else msg)
            except commands.Rejected:
                return  # recorded as a security event; no answer to a forgery
            self._obey(cmd)
        elif t == self._update_b:
            self.updater.on_message(msg)

    def _obey(self, cmd):
        print("agent: command", cmd.op, cmd.args)
        if cmd.op == "interval":
            self.interval_s = cmd.args["s"]
            self.nvs.set_i32("interval", self.interval_s)
            self.nvs.commit()
        elif cmd.op == "read":
            self.read_now = True
        elif cmd.op == "update":
            self.updater.start()  # report where any update stands, resume a download
        self._reply(cmd.counter, True)
        if cmd.op == "wipe":
            self._decommission()
        if cmd.op == "reboot":
            self.client.disconnect()
            machine.reset()

    def _decommission(self):
        # Remote decommissioning (a locked production board has no REPL to
        # wipe it from): every credential erased and overwritten, then a
        # reset into the unprovisioned state, where no network service starts.
        self._send_events()
        self.client.disconnect()
        events.record("provisioning", "wiped", "ok", "every credential and the NVS partition, by command")
        self.me._ks.decommission()  # erases every NVS sector, then resets

    def _reply(self, counter, ok, reason=""):
        if self.online:
            try:
                self.client.publish(self.topics["reply"], self.sealer.seal_reply(self.topics["reply"], counter, ok, reason), qos=1)
            except MQTTError:
                pass  # the connection dropped; maintain() reconnects

    # --- what the agent publishes ------------------------------------------------
    def _publish(self, kind, msg):
        self.client.publish(self.topics[kind], msg, qos=1)

    def reading(self):
        self.seq += 1
        return {"seq": self.seq, "uptime_ms": time.ticks_ms(), "temp_c": _temperature(),
                "heap_free": gc.mem_free(), "interval_s": self.interval_s,
                "spool_queued": self.spool.stats()["queued"], "spool_dropped": sum(self.spool.dropped)}

    def _take_reading(self):
        gc.collect()
        if self.seq in (0, 9, 99):
            # Heap in use by the agent's data: what was in use when main()
            # started (the loaded code, on an ESP32 in flash) is not its own.
            print("agent: heap %d bytes in use by the agent, %d free" % (gc.mem_alloc() - CODE[0], gc.mem_free()))
        msg = self.sealer.seal_reading(self.topics["telemetry"], self.reading())
        if self.online and not self.spool.stats()["queued"]:
            try:
                self._publish("telemetry", msg)
                print("agent: published reading", self.seq)
                self._healthy()
                return
            except MQTTError:
                self.online = False
        self.spool.put(msg)
        print("agent: offline, reading %d spooled" % self.seq)

    def _on_connect(self):
        print("agent: connected to %s:%d over mutual TLS as %s" % (self.me.host, self.me.port, self.me.device_id))
        self.client.publish(self.me.topic(telemetry.HELLO), self.hello, retain=True, qos=1)
        for k in ("cmd", "update"):
            self.client.subscribe(self.topics[k], qos=1)
        n = self.spool.flush(lambda m: self._publish("telemetry", m))
        if n:
            print("agent: delivered %d spooled readings" % n)
        self._send_events()
        if not self.updater.reboot_due:
            # (A slot switch waiting for its reboot is not yet a verdict to report.)
            self.updater.start()
        self._healthy()

    def _send_events(self):
        telemetry.send_events(self.sealer, lambda m: self._publish("events", m), self.topics["events"])

    def _healthy(self):
        # The health check of a trial boot: connected, a message acknowledged.
        if self.healthy:
            return
        self.healthy = True
        trial = bootstate.state()["trial"]
        self.updater.confirm()  # an app or firmware update on trial is kept
        me = bootstate.booted()
        if me and me["counter"] > bootstate.floor():
            bootstate.confirm()  # the floor follows the running image's counter
        if trial:
            events.record("boot", "confirmed", "ok", "v%s floor %d" % (VERSION, bootstate.floor()))
            print("agent: trial image confirmed (floor %d)" % bootstate.floor())

    # --- the loop ----------------------------------------------------------------
    def run(self, sta):
        # The watchdog first (a hang from here on resets the board), then the
        # link, before the clock and MQTT; without it the loop spools.
        try:
            wdt_ms = self.nvs.get_i32("wdt_ms")
        except OSError:
            wdt_ms = watchdog.DEFAULT_MS
        self.wdt_ms = watchdog.start(wdt_ms)
        print("agent: watchdog %d ms" % self.wdt_ms)
        try:
            sta.connect_ms = self.nvs.get_i32("wifi_ms")  # one connection attempt's limit
        except OSError:
            pass
        link = sta.up(net.CONNECT_MS, tick=watchdog.feed)
        if link:
            print("agent: Wi-Fi %s up, address %s" % (sta.ssid, sta.wlan.ifconfig()[0]))
        else:
            print("agent: Wi-Fi %s not up (%s); readings are spooled meanwhile" % (sta.ssid, sta.last or "connecting"))
        # Before the first connection: mbedTLS checks the broker's certificate
        # against this clock, which an ESP32 powers up at 2000-01-01. The
        # floor includes the newest time seen in signed update metadata.
        # Without a link no server can answer: the floor now, the server
        # once the link is up (_sync_clock from the loop).
        src, t = clock.ensure(self.me.ntp if link else None, self.updater.state()["seen"], self._ntp_ms())
        self._clock_due = time.ticks_add(time.ticks_ms(), clock.RESYNC_MS if clock.synced() else clock.RETRY_MS)
        print("agent: clock set from %s (Unix time %d)" % (src, t))
        due = time.ticks_ms()
        while True:
            watchdog.feed()
            clock.remember()  # the floor moves on with the time run (NVS at most every few minutes)
            was = self.online
            try:
                up = sta.maintain()
                # The link came up (a late start, or back after a drop), or
                # the periodic sync is due: the clock before TLS, as at start.
                if up and (not link or time.ticks_diff(time.ticks_ms(), self._clock_due) >= 0):
                    self._sync_clock()
                link = up
                # No link: offline, as with the broker out of reach (readings spooled).
                self.online = self.client.maintain() if up else False
                if self.online and not was:
                    self._on_connect()
                if time.ticks_diff(time.ticks_ms(), due) >= 0 or self.read_now:
                    self.read_now = False
                    due = time.ticks_add(time.ticks_ms(), self.interval_s * 1000)
                    self._take_reading()
                if self.online and events.head()[0] > events.sent():
                    self._send_events()
            except MQTTError:
                self.online = False
            self._updates()
            self._idle(due)

    def _ntp_ms(self):
        # One exchange waits at most half the watchdog's timeout (the
        # agent's shortest is 2 s, an SNTP timeout's default too).
        return min(clock.TIMEOUT_MS, self.wdt_ms // 2)

    def _sync_clock(self):
        if self.me.ntp:
            watchdog.feed()
            src, t = clock.resync(self.me.ntp, self.updater.state()["seen"], self._ntp_ms())
            watchdog.feed()
            print("agent: clock synced from %s (Unix time %d)" % (src, t) if src == "ntp"
                  else "agent: clock not synced (%s, Unix time %d)" % (src, t))
        self._clock_due = time.ticks_add(time.ticks_ms(), clock.RESYNC_MS if clock.synced() else clock.RETRY_MS)

    def _idle(self, due):
        # Wait for the broker or the next reading, whichever comes first: a
        # device idles in poll(), not in a busy loop.
        wait = max(0, min(1000, time.ticks_diff(due, time.ticks_ms())))
        u = self.updater
        if self.online and not self.reports and not (u.reboot_due or u.restart_due):
            try:
                self.client.wait_msg(wait)
            except MQTTError:
                self.online = False
        else:
            time.sleep_ms(min(wait, TICK_MS))

    def _updates(self):
        self.updater.tick()
        # The reports queued now, not "until none is left": each publish
        # waits for its PUBACK and handles what arrives meanwhile, and under
        # a flood of junk on the update topic every message queues another
        # rejection, so that loop never ended (the agent's loop starved,
        # events went unsent until the ring overflowed: found by the agent
        # fuzz campaign). Taken off the queue before the publish: the bound
        # in _queue_report may drop from the front meanwhile.
        for _ in range(len(self.reports)):
            if not (self.reports and self.online):
                break
            rep = self.reports.pop(0)
            try:
                self.client.publish(self.topics["report"], update.report_bytes(rep), qos=1)
            except MQTTError:
                self.reports.insert(0, rep)  # sent again once connected
                self.online = False
                return
            print("agent: update", rep.get("state"), rep.get("reason") or rep.get("pct") or "")
        u = self.updater
        if (u.reboot_due or u.restart_due) and not self.reports:
            print("agent: rebooting into the new image" if u.reboot_due else
                  "agent: restarting to resume the update on a fresh heap")
            self.client.disconnect()
            machine.reset()


CODE = [0]


def _agent(me):
    try:
        return Agent(me)
    except MemoryError:
        # A download resumed first thing (Updater.prepare) can leave the rest
        # of the agent no room: start without it. The download then resumes
        # at connect, where it is refused (no_memory) if it still cannot fit.
        gc.collect()
        return Agent(me, resume=False)


def main():
    gc.collect()
    CODE[0] = gc.mem_alloc()
    try:
        me = identity.require()
    except NotProvisioned as e:
        print("agent: not starting network services:", e)
        return
    try:
        sta = net.Station.provisioned(me._ks)
    except net.NotConfigured as e:
        events.record("network", "not_configured", "failed", "no usable Wi-Fi credentials")
        print("agent: not starting network services:", e)
        return
    rng.radio_on()  # the RNG's entropy source, before the agent draws its nonce epoch (ironclad.rng)
    try:
        _agent(me).run(sta)
    except Exception as e:  # never left dead: record why, then reset (a trial image counts an attempt)
        events.record("agent", "crash", "failed", "%s %s" % (type(e).__name__, e))
        import sys

        sys.print_exception(e)
        machine.reset()
