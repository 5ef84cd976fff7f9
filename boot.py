# Runs first at every boot (frozen into the firmware, so ESP32 Secure Boot V2
# covers it): verified boot of the signed app image. It picks the active A/B
# slot, verifies the image (header, hardware id, payload SHA-256, RSA-3072-PSS
# signature against the keys frozen in ironclad_trust, security counter not
# below the floor), falls back to the other slot, and mounts the verified
# payload read-only at /app. Nothing else is put on the module path: no code
# from the writable filesystem ever runs. With no image that verifies, the
# device stays in recovery mode (REPL only; see docs/verified-boot.md).
import gc

from ironclad import bootflow

bootflow.boot()
bootflow.unload()  # the verifier's RAM goes back to the app
del bootflow
gc.collect()
