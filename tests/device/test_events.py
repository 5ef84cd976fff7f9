# Security event log: hash chain, ring bound, survival across a "reboot"
# (module state dropped), tamper detection.
import os

from ironclad import events

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"


def _reboot():
    events._reset_cache()


def test_record_and_chain():
    assert events.head()[0] == 0
    s1 = events.record("boot", "bad_signature", detail="slot a")
    s2 = events.record("update", "expired", outcome="rejected")
    assert (s1, s2) == (1, 2)
    recs = events.since(0)
    assert [r["seq"] for r in recs] == [1, 2]
    assert recs[0]["kind"] == "boot" and recs[0]["reason"] == "bad_signature" and recs[0]["detail"] == "slot a"
    assert recs[0]["prev"] == bytes(16) and recs[1]["prev"] == recs[0]["hash"]
    assert events.verify_chain(recs) is None
    _reboot()
    assert events.record("boot", "ok", outcome="ok") == 3
    assert events.verify_chain(events.since(0)) is None


def test_ring_is_bounded_and_keeps_newest():
    for i in range(events.SLOTS + 10):
        events.record("t", "r%d" % i, outcome="info")
    assert os.stat(events.PATH)[6] == events.SLOTS * events.RECORD_SIZE
    _reboot()
    recs = events.since(0)
    assert len(recs) == events.SLOTS
    assert recs[0]["seq"] == 11 and recs[-1]["seq"] == events.SLOTS + 10
    assert events.verify_chain(recs) is None
    assert events.record("t", "after", outcome="info") == events.SLOTS + 11


def test_tamper_and_removal_detected():
    for i in range(5):
        events.record("t", "r%d" % i)
    raw = events.raw_since(0)
    bad = bytearray(raw[2])
    bad[40] ^= 1
    assert events.decode(bytes(bad)) is None
    assert events.verify_chain([events.decode(b) for b in raw[:2] + [bytes(bad)] + raw[3:]]) is not None
    # removing a record breaks the chain
    dec = [events.decode(b) for b in raw]
    assert events.verify_chain(dec[:2] + dec[3:]) is not None
    # a re-hashed forgery still does not link to the next record
    forged = events.encode(3, "t", "nothing", "info", "", dec[1]["hash"], ms=0, wall=0)
    assert events.verify_chain(dec[:2] + [events.decode(forged)] + dec[3:]) is not None


def test_sent_marker_and_hostile_strings():
    events.record("cmd", "not\nallowed\x00" + "x" * 100, detail="\xff" * 80)
    r = events.since(0)[0]
    assert r["reason"].startswith("not?allowed?") and len(r["reason"]) == events.MAX_REASON
    assert len(r["detail"]) <= events.MAX_DETAIL
    assert events.sent() == 0
    events.mark_sent(1)
    assert events.sent() == 1
    assert events.raw_since(events.sent()) == []


def test_unwritable_store_never_raises():
    events.PATH = "/nonexistent-dir/x/events.bin"
    assert events.record("boot", "bad") == 0
