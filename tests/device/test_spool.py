# Device tests: the store-and-forward spool. Order, retention limits (bytes,
# age) with drops counted, survival across a reboot (a new Spool on the same
# directory), failed deliveries, damaged records. Power cuts on the real
# littlefs: tests/host/test_spool.py (and `ictl soak --only spool`); the real
# broker: tests/host/test_spool.py too.
import os

from ironclad import events, spool

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"
P = D + "/spool"


def _msg(i, n=40):
    return b"m%05d" % i + bytes(n - 6)


def _ids(msgs):
    return [int(bytes(m[1:6])) for m in msgs]


def _drain(s, limit=0):
    out = []
    s.flush(lambda m: out.append(bytes(m)), limit)
    return out


def test_fifo_across_segments_and_reboots():
    s = spool.Spool(P, max_bytes=8192, seg_bytes=256)
    for i in range(30):
        s.put(_msg(i))
    assert len(s) == 30 and s.stats()["bytes"] == 30 * (12 + 40)
    assert _ids(_drain(s, 7)) == list(range(7))
    s = spool.Spool(P, max_bytes=8192, seg_bytes=256)  # reboot
    assert len(s) == 23
    for i in range(30, 35):
        s.put(_msg(i))
    s = spool.Spool(P, max_bytes=8192, seg_bytes=256)
    assert _ids(_drain(s)) == list(range(7, 35))
    assert len(s) == 0 and s.stats()["bytes"] == 0
    # Delivered segments are gone; only the one being filled and the head remain.
    assert sorted(os.listdir(P))[-1] == "head" and len(os.listdir(P)) == 2
    s.put(_msg(99))
    assert _ids(_drain(spool.Spool(P, max_bytes=8192, seg_bytes=256))) == [99]


def test_max_bytes_drops_oldest_and_counts():
    s = spool.Spool(P, max_bytes=1024, seg_bytes=256)
    for i in range(50):
        s.put(_msg(i))
    st = s.stats()
    keep = 1024 // 52
    assert st["queued"] == keep and st["bytes"] <= 1024
    assert st["dropped_size"] == 50 - keep
    # One event for the episode, not one per dropped record.
    full = [e for e in events.since(0) if e["kind"] == "spool"]
    assert len(full) == 1 and full[0]["reason"] == "full"
    s = spool.Spool(P, max_bytes=1024, seg_bytes=256)
    assert s.stats()["dropped_size"] == 50 - keep
    assert _ids(_drain(s)) == list(range(50 - keep, 50))


def test_max_age_drops_oldest_stamped_records():
    real = spool._wall
    try:
        t = [1800000000]
        spool._wall = lambda: t[0]
        s = spool.Spool(P, max_bytes=8192, max_age_s=3600, seg_bytes=256)
        for i in range(10):
            s.put(_msg(i))
            t[0] += 600  # ten minutes between readings
        # Now: records 0..3 are more than an hour old.
        assert _ids(_drain(s)) == list(range(4, 10))
        assert s.stats()["dropped_age"] == 4
        # Records taken before the clock was set carry no time and are only
        # bounded by size.
        spool._wall = lambda: 0
        s.put(_msg(20))
        spool._wall = lambda: t[0] + 10 ** 6
        s.put(_msg(21))
        assert _ids(_drain(s)) == [20, 21]
    finally:
        spool._wall = real


def test_failed_publish_keeps_the_message():
    s = spool.Spool(P, max_bytes=4096, seg_bytes=256)
    for i in range(5):
        s.put(_msg(i))
    sent = []

    def flaky(m):
        if len(sent) == 2:
            raise OSError(104, "connection closed by broker")
        sent.append(bytes(m))

    try:
        s.flush(flaky)
    except OSError:
        pass
    else:
        raise AssertionError("the publish error must reach the caller")
    assert _ids(sent) == [0, 1] and len(s) == 3
    assert _ids(_drain(spool.Spool(P, max_bytes=4096, seg_bytes=256))) == [2, 3, 4]


def test_damaged_record_skipped_and_counted():
    s = spool.Spool(P, max_bytes=8192, seg_bytes=256)
    for i in range(12):
        s.put(_msg(i))
    # Four 52-byte records per 256-byte segment: flip a data byte of record 5
    # (second segment, second record).
    name = P + "/00000002"
    with open(name, "r+b") as f:
        f.seek(52 + 12 + 10)
        b = f.read(1)
        f.seek(52 + 12 + 10)
        f.write(bytes([b[0] ^ 0xFF]))
    s = spool.Spool(P, max_bytes=8192, seg_bytes=256)
    got = _ids(_drain(s))
    # Record 4 was before the damage; 5..7 go with their segment.
    assert got == [0, 1, 2, 3, 4, 8, 9, 10, 11], got
    assert s.stats()["dropped_corrupt"] == 3


def test_limits_refused():
    s = spool.Spool(P, max_bytes=4096, seg_bytes=256)
    try:
        s.put(bytes(250))
    except ValueError:
        pass
    else:
        raise AssertionError("a record larger than a segment must be refused")
    assert len(s) == 0
    try:
        spool.Spool(P, max_bytes=100, seg_bytes=256)
    except ValueError:
        pass
    else:
        raise AssertionError("bad limits accepted")
