# A device for the host-side telemetry tests (MicroPython): the payload path
# of the agent, wired the way the agent wires it, talking to a real
# mosquitto over mutual TLS (tests/host/test_console.py, test_spool.py).
#
#   micropython -c "import telemetry_peer; telemetry_peer.main('cfg.json')"
#
# cfg.json: dir (ca.der, cert.der, key.der = SEC1, fleet.pub = 65 bytes),
# device_id, host, port, prefix, spool (a directory), events (a directory),
# readings (how many to take), interval_ms, linger_ms (keep serving commands
# after the last reading), seq_file (the next reading's seq, so a restarted
# peer goes on counting), boot_events (security events recorded at start). Prints one line per thing done: PUT <seq>,
# SENT <n>, CMD <op> <counter>, REJECT <reason>, OFFLINE, ONLINE, DONE.
import json
import os
import ssl
import time

from ironclad import commands, events, nonce, spool, telemetry
from ironclad.mqtt import MQTTClient, MQTTError


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def main(cfg_path):
    cfg = json.loads(_read(cfg_path))
    if cfg.get("now"):
        # As the agent's clock.ensure()/provisioning set it: a board's RTC
        # reads 2000-01-01 until then (the `time` stand-in is the board's).
        import machine

        t = cfg["now"] - 946684800
        y, mo, dd, h, mi, s, wd = time.gmtime(t)[:7]
        machine.RTC().datetime((y, mo, dd, wd, h, mi, s, 0))
    d = cfg["dir"] + "/"
    dev = cfg["device_id"]
    events.PATH = cfg["events"] + "/events.bin"
    events.SENT_PATH = cfg["events"] + "/events.sent"
    base = "%s/%s/" % (cfg["prefix"], dev)

    z = telemetry.shared_secret(_read(d + "key.der"), _read(d + "fleet.pub"))
    ctr = nonce.Counter()
    sealer = telemetry.Sealer(z, dev, ctr)
    verifier = commands.Verifier(z, dev, ctr.epoch, base + "cmd")
    sp = spool.Spool(cfg["spool"], max_bytes=cfg.get("spool_bytes", 16384), seg_bytes=1024)
    for i in range(cfg.get("boot_events", 0)):
        events.record("boot", "test_%d" % i, "info")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=_read(d + "ca.der"))
    ctx.load_cert_chain(_read(d + "cert.der"), _read(d + "key.der"))
    c = MQTTClient(dev, cfg["host"], cfg["port"], ctx, server_hostname="localhost", keepalive=30, timeout_s=5)
    c.backoff.base_ms = 200
    c.backoff.cap_ms = 1000
    c.set_last_will(base + "state", b"offline", retain=True, qos=1)
    pending = []  # commands received, acted on outside the MQTT callback
    state = {"interval": cfg.get("interval_ms", 200), "online": False}

    def on_msg(topic, msg):
        try:
            pending.append(verifier.open(topic, msg))
        except commands.Rejected as e:
            print("REJECT", e.args[0])
            pending.append(e.args[0])

    c.set_callback(on_msg)

    def publish(topic):
        return lambda m: c.publish(topic, m, qos=1)

    def online():
        # The agent's order after (re)connecting: hello, then what waited.
        if not c.maintain():
            if state["online"]:
                print("OFFLINE")
                state["online"] = False
            return False
        if not state["online"]:
            c.subscribe(base + "cmd", 1)
            c.publish(base + telemetry.HELLO, telemetry.hello(_read(d + "cert.der"), ctr.epoch), retain=True, qos=1)
            c.publish(base + "state", b"online", retain=True, qos=1)
            state["online"] = True
            print("ONLINE")
        telemetry.send_events(sealer, publish(base + "events"), base + "events")
        n = sp.flush(publish(base + "telemetry"))
        if n:
            print("SENT", n)
        return True

    def serve():
        try:
            if online():
                while pending:
                    cmd = pending.pop(0)
                    if isinstance(cmd, str):
                        c.publish(base + "reply", sealer.seal_reply(base + "reply", 0, False, cmd), qos=1)
                        continue
                    print("CMD", cmd.op, cmd.counter)
                    if cmd.op == "interval":
                        state["interval"] = cmd.args["s"] * 1000
                    elif cmd.op == "read":
                        take()
                    c.publish(base + "reply", sealer.seal_reply(base + "reply", cmd.counter, True), qos=1)
        except MQTTError as e:
            print("OFFLINE", e)
            state["online"] = False

    def take():
        try:
            seq = int(_read(cfg["seq_file"]))
        except (OSError, ValueError):
            seq = 0
        sp.put(sealer.seal_reading(base + "telemetry", {"seq": seq, "temp_c": 21.5, "uptime_ms": time.ticks_ms(),
                                                        "ssid": "home-wifi", "mac": 1234}))
        print("PUT", seq)
        # Replaced whole, so a reset never leaves it empty.
        with open(cfg["seq_file"] + ".tmp", "w") as f:
            f.write(str(seq + 1))
        os.rename(cfg["seq_file"] + ".tmp", cfg["seq_file"])
        return seq

    while True:
        try:
            seq = int(_read(cfg["seq_file"]))
        except (OSError, ValueError):
            seq = 0
        if seq >= cfg["readings"]:
            break
        take()
        serve()
        end = time.ticks_add(time.ticks_ms(), state["interval"])
        while time.ticks_diff(end, time.ticks_ms()) > 0:
            time.sleep_ms(20)
            serve()
    end = time.ticks_add(time.ticks_ms(), cfg.get("linger_ms", 0))
    while len(sp) or time.ticks_diff(end, time.ticks_ms()) > 0:
        serve()
        time.sleep_ms(20)
    c.disconnect()
    print("DONE", sp.stats())
