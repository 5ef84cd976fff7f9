# Runs after boot.py unless the board was soft-reset into the raw REPL (frozen
# into the firmware): start the verified app's main from /app. A trial image
# uses up one of its boot attempts here, before any of its code runs.
import os

from ironclad import bootstate


def _has_entry():
    for name in ("/app/main.mpy", "/app/main.py"):
        try:
            os.stat(name)
            return True
        except OSError:
            pass
    return False


if bootstate.booted():
    bootstate.begin_attempt()
    if _has_entry():
        __import__("main")
    else:
        from ironclad import events

        events.record("boot", "no_entry", outcome="failed", detail=bootstate.booted()[0])
