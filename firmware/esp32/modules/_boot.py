# The Ironclad firmware's first Python code, frozen in place of the port's
# _boot.py. The ESP32 port's main.c runs it with Ctrl-C disabled, then runs
# boot.py and main.py (the frozen ones: a frozen module of that name wins over
# any file on the filesystem), then the REPL. This file decides whether that
# REPL can ever be reached:
#
# - a development firmware (it freezes ironclad_devmode) always returns, and
#   the board behaves as stock MicroPython does: Ctrl-C reaches the REPL;
# - a production firmware on a board that is not provisioned yet returns too,
#   so that a technician can provision it over USB with mpremote
#   (docs/technician.md); the keystore holds no device key yet;
# - a production firmware on a provisioned board never returns. It runs the
#   verified boot and the app itself, still with Ctrl-C disabled; when the app
#   ends, whatever the way out (return, exception, KeyboardInterrupt,
#   SystemExit), the chip resets. The friendly REPL, the raw REPL mpremote
#   needs and WebREPL (not even frozen) are out of reach.
#
# Fail closed: anything that goes wrong before the keystore has said "not
# provisioned" counts as provisioned.
import sys

# First of all: only frozen code is importable, so that no file on the
# writable filesystem (a planted ironclad_devmode.py, or json.py shadowing an
# extensible built-in) is ever imported, by this file or by anything after it.
sys.path[:] = [".frozen"]


def _devmode():
    try:
        import ironclad_devmode  # noqa: F401 (frozen only by firmware/esp32/manifest_dev.py)
    except ImportError:
        return False
    return True


def _mount():
    # littlefs on the "vfs" partition at /, formatted on the first boot (as the
    # port's inisetup does, minus the default boot.py it would write).
    import esp32
    import vfs

    bdev = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")[0]
    try:
        fs = vfs.VfsLfs2(bdev)
    except OSError:
        vfs.VfsLfs2.mkfs(bdev)
        fs = vfs.VfsLfs2(bdev)
    vfs.mount(fs, "/")


def _provisioned():
    from ironclad.keystore import KeyStore

    # "provisioned" is the keystore entry provisioning writes last; a board
    # half way through provisioning stays open so the technician can finish.
    return "provisioned" in KeyStore().names()


def _record(reason):
    try:
        from ironclad import events

        events.record("lockdown", reason, outcome="info")
    except (OSError, MemoryError):
        pass  # the log is evidence, not a condition for booting


def _main():
    if _devmode():
        _mount()
        print("ironclad: DEVELOPMENT firmware: REPL open, no hardware root of trust")
        return
    locked = True
    try:
        _mount()
        locked = _provisioned()
        if not locked:
            _record("provisioning_open")
            print("ironclad: not provisioned: USB provisioning open (docs/technician.md)")
            return
        import gc
        import micropython

        micropython.kbd_intr(-1)  # already off while main.c runs this file; stays off for the app
        gc.collect()  # the keystore's RAM goes back before the verifier runs
        import boot  # noqa: F401 (verified boot: mounts the verified app at /app)

        # The frozen main.py, frozen a second time under this name (a symlink
        # in firmware/esp32/modules/) so that its own __import__("main")
        # reaches /app/main rather than itself (boot.py spent the trial attempt).
        import ironclad_main  # noqa: F401
        from ironclad import bootstate

        if not bootstate.booted():
            # Recovery mode (no image verified): no app to run and no REPL to
            # offer. Waiting rather than resetting keeps the event log and the
            # flash from churning; only a power cycle retries.
            import time

            while True:
                time.sleep(3600)
    finally:
        if locked:
            import machine

            machine.reset()


_main()
del _main
