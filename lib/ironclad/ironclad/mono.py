# Values that must never go backwards (the nonce counter's reservation, the
# clock floor), kept a second time outside NVS: a u64 in a file of its own
# on the littlefs filesystem (the vfs partition), read back as the larger of
# the two.
#
# Why: NVS is one partition. Whoever has the board in hand can dump it and
# write the dump back later (flash encryption does not stop that: a dump
# restored at the same address decrypts as before); the floors it holds
# would then go back in time. With a copy here as well, rolling back NVS
# alone moves nothing. Rolling back the whole flash (NVS and filesystem)
# still does, and only hardware that cannot be rewritten could stop that
# (eFuse bits: far too few for a counter); so the nonce does not rely on
# this at all (a fresh epoch every boot, ironclad.nonce), and the clock
# floor is also raised by signed times (ironclad.clock).
#
# A copy is best effort: it is written after the NVS commit it mirrors and
# a failed write (filesystem full, a power cut) leaves the older, smaller
# value, which the max() ignores.
import struct

DIR = None  # None: beside the security event log (ironclad.events.PATH), /ironclad


def _dir():
    if DIR is not None:
        return DIR
    from ironclad import events

    return events.PATH.rsplit("/", 1)[0]


def _path(name):
    return "%s/mono.%s" % (_dir(), name)


def get(name):
    """The copy of name (0 if there is none or it is unreadable)."""
    try:
        with open(_path(name), "rb") as f:
            b = f.read(9)
    except OSError:
        return 0
    return struct.unpack("<Q", b)[0] if len(b) == 8 else 0


def put(name, v, force=False):
    """Keep v as the copy of name if it is larger (or force: the technician
    resets it at provisioning). False if the write failed."""
    if v <= get(name) and not force:
        return True
    try:
        try:
            f = open(_path(name), "wb")
        except OSError:
            import os

            os.mkdir(_dir())
            f = open(_path(name), "wb")
        with f:
            f.write(struct.pack("<Q", v))
    except OSError:
        return False
    return True
