# What the frozen boot.py runs: choose the A/B slot, spend a trial attempt,
# verify the image, map and mount it read-only at /app; fall back to the other
# slot, or stay in recovery mode. Design and the state machine:
# docs/verified-boot.md.
#
# boot() never raises. On a locked board an exception out of boot.py ends
# in _boot.py's machine.reset(), and a fault that comes back at every boot
# (a firmware without vfs.VfsRom, a payload too big for the heap, a flash
# read error) would reset the board forever. So whatever goes wrong while
# choosing, verifying or mounting one slot (a rejected image, MemoryError,
# OSError, a missing feature, anything) rules that slot out for this boot with
# a security event saying why, and the other slot is tried; with neither, the
# device stays in recovery mode: no app runs, no reset.
#
# Only needed during boot: boot.py unloads this module and the verifier
# (unload()), so their RAM goes back to the app.
import sys

from ironclad import bootstate, events, image

_UNLOAD = ("ironclad.bootflow", "ironclad.image", "ironclad.rsapss", "ironclad.events", "ironclad_trust")

# Reasons of the boot events for failures that are not a verdict on the image.
NO_MEMORY = "no_memory"
NO_FEATURE = "no_feature"  # the firmware lacks a module, class or function the boot needs
LOAD_ERROR = "load_error"  # any other exception (flash, filesystem, a bug)
BAD_PAYLOAD = "bad_payload"  # signed, but not a ROMFS image
NO_ENTRY = "no_entry"  # a ROMFS image with no main to run


def _fault(e):
    """(reason, short detail) for an exception that stopped a boot step."""
    if isinstance(e, MemoryError):
        return NO_MEMORY, ""
    s = str(e)
    if isinstance(e, (AttributeError, ImportError, NotImplementedError)):
        # "'module' object has no attribute 'VfsRom'": the missing name.
        return NO_FEATURE, s[s.rfind(" ") + 1:].strip("'")
    return LOAD_ERROR, "%s %s" % (type(e).__name__, s)


def _load(label, st, where):
    """(Header, VfsRom, window) of a slot whose image may run, mounted at
    `where` when given; else None, each rejection recorded as an event.
    Raises whatever a step raises but image.Rejected."""
    import vfs

    try:
        h = image.verify(label, floor=st.floor, event="boot")
    except image.Rejected:
        return None  # verify recorded why
    try:
        win = image.map_payload(label, h)
        try:
            fs = vfs.VfsRom(win)
        except OSError:
            raise image.Rejected(BAD_PAYLOAD)
    except image.Rejected as e:
        events.record("boot", e.reason, detail=label)
        return None
    if where:
        vfs.mount(fs, where)
        if not _has_entry(where):
            # Mounted, but nothing to run: on a locked board an app that
            # ends resets the chip, so this slot would reset it forever.
            _umount(where)
            events.record("boot", NO_ENTRY, detail=label)
            return None
    return h, fs, win


def _has_entry(where):
    import os

    for name in ("/main.mpy", "/main.py"):
        try:
            os.stat(where + name)
            return True
        except OSError:
            pass
    return False


def _try(label, st, where):
    # One slot, every exception caught: the caller goes on to the other slot.
    try:
        return _load(label, st, where)
    except Exception as e:  # all of them, on purpose: see the module comment
        reason, detail = _fault(e)
        _collect()
        events.record("boot", reason, outcome="failed", detail=("%s %s" % (label, detail)).strip())
        return None


def _collect():
    import gc

    gc.collect()  # what a failed map held goes back before the other slot


def select(where=None):
    """Load the active slot (after ending an expired trial, and after
    spending a trial attempt), else the other one; mount it at `where` when
    given. Returns (label, Header, VfsRom, window, trial), or None when
    neither may run. Raises only if the boot state record cannot be read."""
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
        if i == st.active and st.trial:
            # The attempt is spent on flash before a byte of the trial image
            # is read, so a boot that dies anywhere from here on (out of
            # memory while mapping, a crash in the app, a power cut) still
            # counts, and the trial ends after ATTEMPTS boots whatever
            # happens. If it cannot be written, the trial image does not run.
            st.attempts -= 1
            try:
                bootstate.write(st)
            except Exception as e:  # flash, memory: see the module comment
                st.attempts += 1
                reason, detail = _fault(e)
                events.record("boot", reason, outcome="failed", detail=("%s %s" % (label, detail)).strip())
                continue
        got = _try(label, st, where)
        if got is None:
            continue
        if i != st.active:
            # The active slot was ruled out: the other one is signed and not
            # below the floor, so it becomes the active, confirmed slot (the
            # slot that runs is always the active one: updates patch from it).
            events.record("boot", "fallback", outcome="info", detail=label)
            st.active, st.trial, st.attempts, st.fallback = i, 0, 0, bootstate.NONE
            try:
                bootstate.write(st)
            except Exception:
                if where:
                    _umount(where)
                raise
        return (label,) + got + (st.trial,)
    return None


def _recovery(why):
    # Said at every boot spent in recovery, on the console and in the log.
    events.record("boot", "recovery", outcome="failed", detail=why)
    print("ironclad: recovery mode (%s): no app runs; only a signed full image can be installed" % why)


def _umount(where):
    import vfs

    try:
        vfs.umount(where)
    except Exception:  # nothing was mounted there
        pass


def boot(where="/app"):
    """Select, verify and mount at `where`; put it first on the module path,
    with nothing from the writable filesystem. Returns the Header, or None
    in recovery mode. Never raises (see the module comment)."""
    try:
        sel = select(where)
        if sel is None:
            _recovery("no verified app image")
            return None
        label, h, _, win, trial = sel
        sys.path[:] = [where] + [p for p in sys.path if p not in ("", ".", "/", "/lib", where)]
        bootstate.set_booted(label, h, win)
        print("ironclad: boot %s %s%s" % (label, h.describe(), " (trial)" if trial else ""))
        return h
    except Exception as e:  # the last net: see the module comment
        _umount(where)
        if where in sys.path:
            sys.path.remove(where)
        bootstate.set_booted(None, None, None)
        reason, detail = _fault(e)
        events.record("boot", reason, outcome="failed", detail=detail)
        _recovery(reason)
        return None


def unload():
    import ironclad

    for name in _UNLOAD:
        sys.modules.pop(name, None)
        attr = name.rsplit(".", 1)[-1]
        if name.startswith("ironclad.") and attr in ironclad.__dict__:
            delattr(ironclad, attr)
