# The agent's main job. First version: read the broker settings from the
# device's filesystem, connect over mutual TLS and publish readings.
import json
import ssl
import time

from ironclad.mqtt import MQTTClient

CONFIG_DIR = "/ironclad"


def _read(name, mode="rb"):
    with open(CONFIG_DIR + "/" + name, mode) as f:
        return f.read()


def tls_context():
    # Mutual TLS, CERT_REQUIRED: the broker must prove itself with the fleet CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=_read("ca.der"))
    ctx.load_cert_chain(_read("cert.der"), _read("key.der"))
    return ctx


def reading(seq):
    import esp32

    return {"seq": seq, "uptime_ms": time.ticks_ms(), "temp_c": esp32.mcu_temperature()}


def main():
    try:
        cfg = json.loads(_read("config.json", "r"))
    except OSError:
        print("ironclad: not configured (no %s/config.json): agent idle" % CONFIG_DIR)
        return
    dev = cfg["device_id"]
    topic = "%s/%s/telemetry" % (cfg["prefix"], dev)
    c = MQTTClient(dev, cfg["host"], cfg["port"], tls_context(), server_hostname=cfg.get("hostname", "localhost"))
    c.connect()
    print("ironclad: connected to %s:%d over mutual TLS as %s" % (cfg["host"], cfg["port"], dev))
    seq = 0
    while True:
        seq += 1
        c.publish(topic, json.dumps(reading(seq)).encode(), qos=1)
        print("ironclad: published reading", seq)
        time.sleep(cfg.get("interval_s", 2))
