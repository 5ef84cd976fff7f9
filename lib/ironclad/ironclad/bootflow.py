# What the frozen boot.py runs: choose the A/B slot, verify it, fall back,
# or stay in recovery mode; mount the verified payload read-only at /app.
# Design and the state machine: docs/verified-boot.md.
#
# Only needed during boot: boot.py unloads this module and the verifier
# (unload()), so their RAM goes back to the app.
import sys

from ironclad import bootstate, events, image

_UNLOAD = ("ironclad.bootflow", "ironclad.image", "ironclad.rsapss", "ironclad.events", "ironclad_trust")


def _load(label, st):
    """(Header, VfsRom, window) for a slot whose image may run, else None
    (each rejection recorded as an event)."""
    import vfs

    try:
        h = image.verify(label, floor=st.floor, event="boot")
    except image.Rejected:
        return None
    try:
        win = image.map_payload(label, h)
        return h, vfs.VfsRom(win), win
    except image.Rejected as e:
        reason = e.reason
    except OSError:
        reason = "bad_payload"  # signed, but not a ROMFS image
    events.record("boot", reason, detail=label)
    return None


def select():
    """Load the active slot (after ending an expired trial), else the other
    one. Returns (label, Header, VfsRom, window), or None when neither may run."""
    st = bootstate.read()
    if st.trial and st.attempts == 0:
        # The new image booted ATTEMPTS times and never confirmed itself.
        events.record("boot", "trial_expired", detail=bootstate.SLOTS[st.active])
        if st.fallback != bootstate.NONE:
            st.active = st.fallback
        st.trial, st.fallback = 0, bootstate.NONE
        bootstate.write(st)
    for i in (st.active, 1 - st.active):
        label = bootstate.SLOTS[i]
        got = _load(label, st)
        if got is None:
            continue
        if i != st.active:
            # The active slot was rejected: the other one is signed and not
            # below the floor, so it becomes the active, confirmed slot.
            events.record("boot", "fallback", outcome="info", detail=label)
            st.active, st.trial, st.attempts, st.fallback = i, 0, 0, bootstate.NONE
            bootstate.write(st)
        return (label,) + got
    return None


def _recovery(why):
    # Said at every boot spent in recovery, on the console and in the log.
    events.record("boot", "recovery", outcome="failed", detail=why)
    print("ironclad: recovery mode (%s): no app runs; only a signed full image can be installed" % why)


def boot(where="/app"):
    """Select, verify and mount at `where`; put it first on the module path,
    with nothing from the writable filesystem. Returns the Header or None."""
    import vfs

    sel = select()
    if sel is None:
        _recovery("no verified app image")
        return None
    label, h, fs, win = sel
    vfs.mount(fs, where)
    bootstate.set_booted(label, h, win)
    sys.path[:] = [where] + [p for p in sys.path if p not in ("", ".", "/", "/lib", where)]
    print("ironclad: boot %s %s%s" % (label, h.describe(), " (trial)" if bootstate.read().trial else ""))
    return h


def _index(label):
    try:
        return bootstate.SLOTS.index(label)
    except ValueError:
        raise ValueError("not an app slot: %r" % (label,))


def install(label, header=None, buf=None):
    """Make the image just written into slot `label` boot next, on trial.
    The slot is verified here (whatever the caller checked; buf: a 4 KiB
    buffer to read it through); the running slot becomes the fallback.
    Raises image.Rejected, ValueError."""
    i = _index(label)
    if bootstate.running(label):
        raise ValueError("cannot install over the running slot")
    st = bootstate.read()
    h = image.verify(label, floor=st.floor, event="install", buf=buf)
    if header is not None and header.raw != h.raw:
        raise image.Rejected(image.CHANGED)
    prev = st.active
    if prev != i and (bootstate.running(bootstate.SLOTS[prev]) or _verifies(bootstate.SLOTS[prev], st.floor)):
        # A trial needs somewhere to fall back to; with no good image to
        # return to (recovery), the new image boots without a trial.
        st.trial, st.attempts, st.fallback = 1, bootstate.ATTEMPTS, prev
    else:
        st.trial, st.attempts, st.fallback = 0, 0, bootstate.NONE
    st.active = i
    bootstate.write(st)
    return h


def _verifies(label, floor):
    try:
        image.verify(label, floor=floor, event=None)
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
        image.verify(_FileSlot(f, size), floor=bootstate.floor(), event="install")
        f.seek(0)
        buf = bytearray(1024)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            w.write(memoryview(buf)[:n])
    return install(label)


def unload():
    import ironclad

    for name in _UNLOAD:
        sys.modules.pop(name, None)
        attr = name.rsplit(".", 1)[-1]
        if name.startswith("ironclad.") and attr in ironclad.__dict__:
            delattr(ironclad, attr)
