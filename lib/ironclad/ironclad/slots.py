# Installing an image into an A/B app slot: the service the updater and
# recovery use to make a written slot boot next (on trial when there is a
# verified image to fall back to). Design: docs/verified-boot.md, "Install,
# trial, confirm, rollback".
#
# Layers: bootstate (the record) and image (the format, the verifier) are
# below this module; the updater (update) and the boot flow (bootflow) above
# or beside it. Nothing below imports it, so there is no import circle.
from ironclad import bootstate, events, image


def _index(label):
    try:
        return bootstate.SLOTS.index(label)
    except ValueError:
        raise ValueError("not an app slot: %r" % (label,))


def install(label, header=None, buf=None, tick=None):
    """Make the image just written into slot `label` boot next, on trial.
    The slot is verified here (whatever the caller checked; buf: a 4 KiB
    buffer to read it through; tick: image.verify's, the updater's watchdog
    feed); the running slot becomes the fallback.
    Raises image.Rejected, ValueError, OSError (flash)."""
    i = _index(label)
    if bootstate.running(label):
        raise ValueError("cannot install over the running slot")
    st = bootstate.read()
    h = image.verify(label, floor=st.floor, event="install", buf=buf, tick=tick)
    if header is not None and header.raw != h.raw:
        raise image.Rejected(image.CHANGED)
    _mappable(label, h)
    prev = st.active
    if prev != i and (bootstate.running(bootstate.SLOTS[prev]) or _verifies(bootstate.SLOTS[prev], st.floor, tick)):
        # A trial needs somewhere to fall back to; with no good image to
        # return to (recovery), the new image boots without a trial.
        st.trial, st.attempts, st.fallback = 1, bootstate.ATTEMPTS, prev
    else:
        st.trial, st.attempts, st.fallback = 0, 0, bootstate.NONE
    st.active = i
    bootstate.write(st)
    return h


def _mappable(label, h):
    # An image the boot path could not map on this board is refused now,
    # not found out at the next boot (docs/verified-boot.md, "The map limit").
    try:
        image.check_mappable(label, h.length)
    except image.Rejected as e:
        events.record("install", e.reason, detail="%s %d bytes" % (label, h.length))
        raise


def _verifies(label, floor, tick=None):
    try:
        image.verify(label, floor=floor, event=None, tick=tick)
        return True
    except image.Rejected:
        return False


class _FileSlot:
    # An image file seen as a slot, so the same streaming verifier checks it
    # before a byte of it is written to flash.
    def __init__(self, f, size):
        self.f, self.size = f, size

    def info(self):
        return (1, 0x40, 0, self.size, "file", False)

    def readblocks(self, block, buf, off=0):
        # Past the end of the file reads as erased flash; the verifier's
        # length checks never ask for it but on a file shorter than a header.
        self.f.seek(block * 4096 + off)
        n = self.f.readinto(buf) or 0
        for i in range(n, len(buf)):
            buf[i] = 0xFF


def install_file(path, label=None):
    """Recovery and full updates: verify a signed image file, copy it into a
    slot (default: the inactive one) and install it. A bad file changes
    nothing on flash but the event log."""
    import os

    label = label or bootstate.inactive()
    if bootstate.running(label):
        raise ValueError("cannot install over the running slot")
    size = os.stat(path)[6]
    w = image.SlotWriter(label)
    with open(path, "rb") as f:
        if size > w.size:
            events.record("install", image.TOO_LARGE, detail=label)
            raise image.Rejected(image.TOO_LARGE)
        _mappable(label, image.verify(_FileSlot(f, size), floor=bootstate.floor(), event="install"))
        f.seek(0)
        buf = bytearray(1024)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            w.write(memoryview(buf)[:n])
        w.close()
    return install(label)
