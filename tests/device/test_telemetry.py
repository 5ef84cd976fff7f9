# Device tests: the persisted nonce counter, key derivation and the Sealer
# (allowlist, pseudonym, topic binding, overhead, steady-state allocation).
# The fleet side is played by the same primitives with the fleet's private
# key; tests/host/test_telemetry.py opens device messages with pycose.
import gc
import os

import esp32

from ironclad import cbor, cose, der, events, nonce, p256, telemetry

# The library loads from source on the unix port and is compiled into the
# heap (70 KiB here, 120 KiB at the peak of compiling; p256 alone takes 14
# KiB, the esp32 stand-in 18 KiB); on a board it is
# frozen into flash. test_sealing_steady_state_allocates_little measures
# what sealing itself allocates. The NVS rollback test loads the commands
# and clock modules too, beside the stand-ins held to the port profile and
# the 2000-epoch `time`: 256 KiB (224 ran out in CI's checkout, whose
# longer paths make the source-compiled modules' qstrs longer).
HEAP_KIB = 256

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"
TOPIC = "ironclad/dev-0007/telemetry"


def _reboot_nvs():
    # A new boot reads NVS from flash again (the stand-in caches it per process).
    esp32._store = None


def _raises(exc, fn, *a):
    try:
        fn(*a)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)


def _pair():
    d = p256.generate()
    return d, p256.public_key(d)


def test_counter_reserves_blocks_and_survives_reboot():
    c = nonce.Counter(block=4)
    ep = c.epoch
    assert len(ep) == 8
    got = [c.next() for _ in range(6)]
    assert got == [0, 1, 2, 3, 4, 5]
    _reboot_nvs()
    c2 = nonce.Counter(block=4)
    assert c2.epoch != ep and c2.previous == [ep]  # a fresh epoch every boot; the hello names the last ones
    eps = [ep, c2.epoch]
    for _ in range(4):
        _reboot_nvs()
        eps.append(nonce.Counter(block=4).epoch)
    _reboot_nvs()
    assert nonce.Counter(block=4).previous == eps[::-1][:3]
    # 6 values used, 8 reserved: the next boot starts past the reservation.
    assert c2.next() == 8
    # A second counter name is independent, with its own epoch.
    other = nonce.Counter("other", block=4)
    assert other.next() == 0 and other.epoch != ep


def test_counter_block_commit_count():
    # One NVS commit per block, not per value.
    commits = []

    class Counting:
        def __init__(self):
            self.n = esp32.NVS(nonce.NAMESPACE)

        def get_blob(self, k, b):
            return self.n.get_blob(k, b)

        def set_blob(self, k, v):
            self.n.set_blob(k, v)

        def commit(self):
            commits.append(1)
            self.n.commit()

    c = nonce.Counter(block=16, nvs=Counting())
    first = len(commits)  # the new epoch
    for _ in range(64):
        c.next()
    assert len(commits) - first == 4


def test_counter_exhaustion_never_wraps():
    c = nonce.Counter(block=4, limit=10)
    assert [c.next() for _ in range(10)] == list(range(10))
    _raises(nonce.NonceExhausted, c.next)
    _reboot_nvs()
    c = nonce.Counter(block=4, limit=10)
    _raises(nonce.NonceExhausted, c.next)


def test_lost_record_means_new_epoch():
    c = nonce.Counter(block=4)
    ep = c.epoch
    c.next()
    n = esp32.NVS(nonce.NAMESPACE)
    n.erase_key("up")
    n.commit()
    _reboot_nvs()
    c2 = nonce.Counter(block=4)
    # A new epoch, and the counter goes on from its copy outside NVS
    # (ironclad.mono): the console's high-water mark still holds.
    assert c2.epoch != ep and c2.next() == 4


def _nvs_image(restore=False):
    # The nvs partition dumped to a file (physical access: esptool
    # read_flash at its offset in the partition table), or written back
    # from it, a sector at a time.
    p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="nvs")[0]
    gc.collect()  # a 4 KiB block in a heap fragmented by compiling
    buf = bytearray(4096)
    with open(D + "/nvs.dump", "rb" if restore else "wb") as f:
        for i in range(p.info()[3] // 4096):
            if restore:
                f.readinto(buf)
                p.ioctl(6, i)  # erase the sector
                p.writeblocks(i, buf)
            else:
                p.readblocks(i, buf)
                f.write(buf)
    _reboot_nvs()


def test_nvs_rolled_back_repeats_no_nonce_and_no_floor_goes_back():
    # Issue 14 item 4: an earlier dump of the nvs partition written back.
    from ironclad import clock

    from ironclad import commands

    dd, dpub = _pair()
    fd, fpub = _pair()
    z = telemetry.shared_secret(dd, fpub)
    ctopic = "ironclad/dev-0007/cmd"

    def command(epoch, ctr):  # the console's side (iat 0: this RTC was never set, time not judged)
        key, iv = telemetry.derive(p256.ecdh(fd, dpub), epoch, telemetry.DOWN, "dev-0007")
        return bytes(cose.Encrypt0(key, iv).encrypt_seq(ctr, cbor.encode({"op": "read", "iat": 0}), ctopic.encode()))

    c = nonce.Counter(block=4)
    clock._store(clock.RELEASED + 100)
    _nvs_image()  # the attacker's dump
    cmd = command(c.epoch, 5)
    assert commands.Verifier(z, "dev-0007", c.epoch, ctopic).open(ctopic, cmd).op == "read"
    try:
        mono_old = open(D + "/mono.nonce_up", "rb").read()
    except OSError:
        mono_old = b""  # none yet: nothing was reserved
    used = set((c.epoch, c.next()) for _ in range(10))
    clock._store(clock.RELEASED + 5000)
    _reboot_nvs()
    c = nonce.Counter(block=4)
    used |= set((c.epoch, c.next()) for _ in range(3))
    last = c.peek()
    _nvs_image(restore=True)  # written back
    assert esp32.NVS(clock.NVS_NS).get_i32("floor") == clock.RELEASED + 100  # NVS did go back
    c = nonce.Counter(block=4)
    again = [(c.epoch, c.next()) for _ in range(20)]
    assert not used & set(again)  # no (epoch, counter) pair, so no (key, nonce), repeats
    assert again[0][1] >= last  # and the counter did not go back either (its copy outside NVS)
    assert clock.stored() >= clock.RELEASED + 5000  # the clock floor did not go back
    try:  # the command accepted before is not accepted again: its keys died with that boot's epoch
        commands.Verifier(z, "dev-0007", c.epoch, ctopic).open(ctopic, cmd)
        raise AssertionError("replayed command accepted")
    except commands.Rejected as e:
        assert e.args[0] == "forged"
    # The whole flash written back (NVS and the copies on the filesystem):
    # the counter does go back now, but under a fresh epoch, so still no
    # (key, nonce) pair repeats.
    used |= set(again)
    with open(D + "/mono.nonce_up", "wb") as f:
        f.write(mono_old)
    _nvs_image(restore=True)
    c = nonce.Counter(block=4)
    again = [(c.epoch, c.next()) for _ in range(20)]
    assert again[0][1] < last and not used & set(again)


def test_private_scalar_from_sec1():
    d, pub = _pair()
    assert telemetry.private_scalar(der.ec_private_key_der(d, pub)) == d
    assert telemetry.private_scalar(d) == d
    _raises(ValueError, telemetry.private_scalar, b"\x30\x03\x02\x01\x02")


def test_both_sides_derive_the_same_keys():
    dd, dpub = _pair()
    fd, fpub = _pair()
    z = telemetry.shared_secret(dd, fpub)
    assert z == p256.ecdh(fd, dpub)
    up = telemetry.derive(z, b"E" * 8, telemetry.UP, "dev-0007")
    down = telemetry.derive(z, b"E" * 8, telemetry.DOWN, "dev-0007")
    assert len(up[0]) == 16 and len(up[1]) == 13
    assert up != down
    assert telemetry.derive(z, b"F" * 8, telemetry.UP, "dev-0007") != up
    assert telemetry.derive(z, b"E" * 8, telemetry.UP, "dev-0008") != up


def _sealer(fields=telemetry.FIELDS):
    # A board powers up at 2000-01-01; the agent sets the clock before it
    # seals (clock.ensure): 2026-12-01, as the stand-in `time` is the board's.
    import machine

    machine.RTC().datetime((2026, 12, 1, 0, 0, 0, 0, 0))
    dd, dpub = _pair()
    fd, fpub = _pair()
    s = telemetry.Sealer(telemetry.shared_secret(dd, fpub), "dev-0007", nonce.Counter(), fields)
    key, iv = telemetry.derive(p256.ecdh(fd, dpub), s.counter.epoch, telemetry.UP, "dev-0007")
    return s, cose.Encrypt0(key, iv)


def test_sealed_reading_opens_at_the_fleet_with_allowlist_applied():
    s, fleet = _sealer()
    # (temp_c as an int: the device's CBOR decoder refuses floats; the host
    # tests decode floats with cbor2.)
    msg = bytes(s.seal_reading(TOPIC, {"seq": 1, "temp_c": 21, "battery_mv": 3300,
                                       "mac": "e3:cb:3f:94:ff:82", "ssid": "home", "note": 5,
                                       "rssi_dbm": "strong"}))
    seq, pt = fleet.decrypt_seq(msg, TOPIC.encode())
    body = cbor.decode(pt)
    assert seq == 0
    assert body["id"] == "dev-0007" and body["seq"] == 1 and body["battery_mv"] == 3300
    assert "mac" not in body and "ssid" not in body and "note" not in body and "rssi_dbm" not in body
    assert s.dropped == 4
    assert body.get("ts", 1) > 1735689600  # the clock is set (_sealer)
    # Bound to the topic: the same bytes under another topic do not open.
    _raises(cose.AuthError, fleet.decrypt_seq, msg, b"ironclad/dev-0008/telemetry")
    # Counters advance: no two messages share a nonce.
    m2 = bytes(s.seal_reading(TOPIC, {"seq": 2}))
    assert fleet.decrypt_seq(m2, TOPIC.encode())[0] == 1


def test_body_is_the_deterministic_cbor_of_the_allowed_fields():
    # Sealer.body writes into a reused buffer with its own fast paths; the
    # generic encoder (cbor.encode: head(), keys sorted) must agree byte for
    # byte, at every integer head size and sign, with and without the wall
    # time, and with fields that are absent, disallowed or not numbers.
    s, _ = _sealer()
    wall = telemetry._wall
    edges = (0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 40) + 5, -1, -24, -25,
             -256, -257, -65536, -65537, -(1 << 32), -(1 << 32) - 1)
    try:
        for t in (1800000000, 0):
            telemetry._wall = lambda: t
            for i, v in enumerate(edges):
                w = edges[(i + 7) % len(edges)]
                # (MicroPython's bool is no int: a flag is not a number here.)
                r = {"seq": v, "uptime_ms": w, "heap_free": i, "note": 5, "rssi_dbm": "weak",
                     "interval_s": None, "battery_mv": True}
                want = {"id": "dev-0007", "seq": v, "uptime_ms": w, "heap_free": i}
                if t:
                    want["ts"] = t
                before = s.dropped
                got = bytes(s.body(r))
                assert got == cbor.encode(want), (v, w, t)
                assert s.dropped - before == 4
    finally:
        telemetry._wall = wall
    # More than 23 entries: a 2-byte map head.
    many = tuple("f%02d" % i for i in range(30))
    s2, _ = _sealer(many)
    r = {k: i for i, k in enumerate(many)}
    want = dict(r, id="dev-0007")
    t = telemetry._wall()
    if t:
        want["ts"] = t
    assert bytes(s2.body(r)) == cbor.encode(want)


def reading_of(sealer, size):
    """A plausible reading whose sealed body is exactly size bytes (the
    uptime's CBOR length is what is varied)."""
    for up in (0, 100, 1000, 100000, 1 << 33):
        for seq in (5, 1000, 100000):
            for extra in ({}, {"rssi_dbm": -61}, {"rssi_dbm": -61, "heap_free": 30000}):
                r = {"seq": seq, "temp_c": 21.5, "battery_mv": 3712, "uptime_ms": up}
                r.update(extra)
                if len(sealer.body(r)) == size:
                    return r
    raise AssertionError("no reading of %d bytes" % size)


def test_overhead_of_a_64_byte_reading():
    s, fleet = _sealer()
    body = s.body(reading_of(s, 64))
    assert len(body) == 64
    for ctr in (0, 1 << 16, (1 << 40) - 1):
        s.counter._next = ctr
        s.counter._hi = ctr + 1
        msg = s.seal(TOPIC, body)
        over = len(msg) - len(body)
        print("REPORT: nonce counter %d: 64-byte reading -> %d bytes, overhead %d" % (ctr, len(msg), over))
        assert over <= 24
        assert fleet.decrypt_seq(bytes(msg), TOPIC.encode()) == (ctr, body)


def test_pseudonym_refuses_mac():
    import binascii
    import machine

    mac = binascii.hexlify(machine.unique_id()).decode()
    fd, fpub = _pair()
    z = telemetry.shared_secret(p256.generate(), fpub)
    c = nonce.Counter()
    for bad in (mac, mac.upper(), ":".join(mac[i:i + 2] for i in range(0, 12, 2)), "esp32-" + mac[6:]):
        _raises(ValueError, telemetry.Sealer, z, bad, c)
    telemetry.Sealer(z, "dev-0007", c)


def test_events_batched_and_marked_sent():
    s, fleet = _sealer()
    for i in range(6):
        events.record("boot", "r%d" % i)
    sent = []
    topic = "ironclad/dev-0007/events"
    assert telemetry.send_events(s, lambda m: sent.append(bytes(m)), topic, batch=4) == 6
    assert len(sent) == 2 and events.sent() == 6
    recs = []
    for m in sent:
        body = cbor.decode(fleet.decrypt_seq(m, topic.encode())[1])
        recs += [events.decode(r) for r in body["ev"]]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert events.verify_chain(recs) is None
    # Nothing new: nothing sent. A failing publish leaves the mark alone.
    assert telemetry.send_events(s, lambda m: sent.append(m), topic) == 0
    events.record("boot", "r6")

    def down(m):
        raise OSError(104)

    _raises(OSError, telemetry.send_events, s, down, topic)
    assert events.sent() == 6


def test_send_events_ends_while_a_flood_records_more():
    # Each publish waits for its PUBACK and handles what arrives meanwhile:
    # under a flood that records 5 events per publish, sending "until none
    # is left" never ended (found by the agent fuzz campaign: readings
    # starved, the ring overflowed). It sends what was there when called.
    s, fleet = _sealer()
    for i in range(6):
        events.record("boot", "r%d" % i)
    sent = []

    def publish(m):
        sent.append(m)
        if len(sent) > 50:
            raise AssertionError("send_events does not end")
        for i in range(5):
            events.record("cmd", "flood%d" % i)

    assert telemetry.send_events(s, publish, "ironclad/dev-0007/events", batch=4) == 8
    assert len(sent) == 2 and events.sent() == 8 and events.head()[0] == 16


def test_sealing_steady_state_allocates_little():
    s, fleet = _sealer()
    r = {"seq": 1, "uptime_ms": 5000, "temp_c": 21.5, "battery_mv": 3712}
    for _ in range(3):
        s.seal_reading(TOPIC, r)
    gc.collect()
    before = gc.mem_alloc()
    for i in range(200):
        r["seq"] = i
        s.seal_reading(TOPIC, r)
    gc.collect()
    grown = gc.mem_alloc() - before
    print("REPORT: 200 sealed readings: heap %d B after vs before (collected)" % grown)
    assert grown < 512


def test_a_sealed_reading_survives_replies_and_events():
    # Issue 14 item 5: a reading waits for its PUBACK; a command comes in
    # meanwhile and its reply is sealed from inside the MQTT callback; then
    # the reading's publish fails and it goes to the spool. What is spooled
    # must be the reading, not the reply (the console would see a reading
    # that does not open: a false forgery alarm, and the reading lost).
    s, fleet = _sealer()
    reading = s.seal_reading(TOPIC, {"seq": 7, "temp_c": 21})
    kept = bytes(reading)
    s.seal_reply("ironclad/dev-0007/reply", 1234, True)
    s.seal_events("ironclad/dev-0007/events", [])
    assert bytes(reading) == kept
    ctr, pt = fleet.decrypt_seq(reading, TOPIC.encode())
    assert cbor.decode(pt)["seq"] == 7
