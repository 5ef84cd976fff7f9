# Device tests for the boot state record (ironclad.bootstate) and the image
# verifier's bounds (ironclad.image): two copies with sequence numbers and a
# CRC, torn copies ignored, the older copy kept by every write; a header whose
# lengths exceed the slot is rejected after reading the header only.
HEAP_KIB = 160  # passed at 104 KiB (2026-12-06, 8 KiB steps); the rest is margin: how fragmented compiling from source leaves the heap varies between checkouts

import os

import esp32
from ironclad import bootstate, events, image

D = os.getenv("IC_TMP")
events.PATH = D + "/events.bin"
events.SENT_PATH = D + "/events.sent"


def _raw(i):
    p = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=bootstate.PART)[0]
    b = bytearray(32)
    p.readblocks(i, b)
    return p, b


def test_fresh_state_and_round_trip():
    st = bootstate.read()
    assert (st.active, st.trial, st.floor, st.fallback, st.copy) == (0, 0, 0, bootstate.NONE, -1)
    st.floor, st.active = 7, 1
    bootstate.write(st)
    got = bootstate.read()
    assert (got.active, got.floor, got.seq, got.copy) == (1, 7, 1, 0)
    assert bootstate.active() == "app_b" and bootstate.inactive() == "app_a" and bootstate.floor() == 7
    assert bootstate.state()["active"] == "app_b"


def test_writes_alternate_copies_and_keep_the_older():
    st = bootstate.read()
    for i in range(5):
        st.floor = i
        bootstate.write(st)
        assert st.copy == i % 2
        # The copy not just written holds the previous record.
        _, other = _raw(1 - st.copy)
        prev = bootstate.decode(other)
        assert (prev is None and i == 0) or prev.floor == i - 1
    assert bootstate.read().floor == 4 and bootstate.read().seq == 5


def test_torn_or_corrupt_copy_is_ignored():
    st = bootstate.read()
    st.floor = 3
    bootstate.write(st)  # copy 0, seq 1
    st.floor = 9
    bootstate.write(st)  # copy 1, seq 2
    p, rec = _raw(1)
    for cut in (0, 1, 5, 17, 28, 31):
        torn = bytearray(b"\xff" * 32)
        torn[:cut] = rec[:cut]
        assert bootstate.decode(torn) is None
    p.ioctl(6, 1)
    # A torn write of copy 1: on a development board its first 17 bytes
    # landed; under flash encryption (a production board) writes go in
    # 16-byte blocks, and its first block landed, the second reads as noise.
    p.writeblocks(1, rec[:16] if p.info()[5] else rec[:17], 0)
    got = bootstate.read()
    assert got.floor == 3 and got.copy == 0  # the older record survives
    bad = bytearray(rec)
    bad[12] ^= 1  # the floor, with a CRC that no longer matches
    assert bootstate.decode(bad) is None
    # A record with a valid CRC but impossible fields is refused too.
    st2 = bootstate.State(active=1, attempts=200)
    assert bootstate.decode(bootstate.encode(st2)) is None


def test_confirm_needs_a_verified_boot():
    try:
        bootstate.confirm()
    except ValueError:
        return
    raise AssertionError("confirm() without a verified boot must raise")


class _Anchors:
    HWID = "esp32-sim"
    KEYS = {}
    RETIRED = ()


class _Spy:
    # A slot that records every read.
    def __init__(self, header, size):
        self.header = header
        self.size = size
        self.reads = []

    def info(self):
        return (1, 0x40, 0, self.size, "spy", False)

    def readblocks(self, block, buf, off=0):
        a = block * 4096 + off
        self.reads.append((a, len(buf)))
        if a + len(buf) > self.size:
            raise OSError(-260)
        for i in range(len(buf)):
            buf[i] = self.header[a + i] if a + i < len(self.header) else 0xFF


def _header(length, sig_len=384, key_id=b"k1"):
    import struct

    return struct.pack(image._FMT, image.MAGIC, 1, 128, 1, 1, length, sig_len, 0, bytes(8), bytes(32),
                       b"esp32-sim", key_id, bytes(32))


def test_lengths_beyond_the_slot_read_nothing_past_the_header():
    size = 0x48000
    for length, sig in ((0x7FFFFFF0, 384), (size - 128 - 383, 384), (size, 0x10), (0xFFFFFFFF, 0xFFFF)):
        spy = _Spy(_header(length, sig), size)
        try:
            image.verify(spy, floor=0, anchors=_Anchors, event="boot")
            raise AssertionError("accepted")
        except image.Rejected as e:
            assert e.reason == "too_large", e.reason
        assert spy.reads == [(0, 128)], spy.reads
    recs = events.since(0)
    assert len(recs) == 4 and recs[-1]["reason"] == "too_large" and recs[-1]["detail"] == "spy"


def test_header_field_checks():
    size = 0x48000
    cases = ((_header(10, 0), "unsigned"), (_header(10, key_id=b""), "bad_header"),
             (_header(10, key_id=b"k 1"), "bad_header"), (b"\xff" * 128, "empty"), (b"NOPE" + _header(10)[4:], "bad_magic"),
             (_header(10), "unknown_key"))
    for hdr, reason in cases:
        try:
            image.verify(_Spy(hdr, size), floor=0, anchors=_Anchors, event=None)
            raise AssertionError("accepted")
        except image.Rejected as e:
            assert e.reason == reason, (reason, e.reason)
    assert events.since(0) == []  # event=None records nothing
