# Runs first at every boot (frozen into the firmware, so ESP32 Secure Boot V2
# covers it): verified boot of the signed app image. It picks the active A/B
# slot, spends a trial attempt if the image is on trial, verifies the image
# (header, hardware id, payload SHA-256, RSA-3072-PSS signature against the
# keys frozen in ironclad_trust, security counter not below the floor), falls
# back to the other slot, and mounts the verified payload read-only at /app.
# Nothing else is put on the module path: no code from the writable
# filesystem ever runs. With no image that verifies, the device stays in
# recovery mode (no app; see docs/verified-boot.md).
#
# Nothing may escape this file: on a locked board _boot.py resets when it
# raises, and a fault that is there at every boot would reset the board
# forever. bootflow.boot() catches everything itself; this catches what is
# left (the import of the boot flow itself failing, out of memory).
import gc

try:
    from ironclad import bootflow

    bootflow.boot()
    bootflow.unload()  # the verifier's RAM goes back to the app
    del bootflow
except Exception as e:  # all of them, on purpose: see above
    try:
        from ironclad import events

        events.record("boot", "recovery", outcome="failed", detail="%s %s" % (type(e).__name__, e))
    except Exception:  # the log is evidence, not a condition for booting
        pass
    print("ironclad: recovery mode (%s): no app runs" % type(e).__name__)
gc.collect()
