# What the production Ironclad firmware freezes (MICROPY_FROZEN_MANIFEST, set
# by firmware/esp32/ironclad.cmake): the boot path and nothing else, so Secure
# Boot V2 covers every byte of code that can run before the verified app, and
# the app finds the library it imports here. tests/host/test_firmware.py
# checks this list against the import closure of the boot path (_boot.py,
# boot.py, main.py, the app image and the host tools' device code): add a
# module here when the boot path starts importing it, remove it when it stops.
# Paths are relative to this file. Not included: the port's own manifest (no
# WebREPL, no inisetup, no mip, no upip, no asyncio).
metadata(description="Ironclad ESP32 firmware: verified boot, keystore, agent library", version="0.1.0")

# The TLS the agent uses: micropython-lib's ssl over the port's built-in tls.
require("ssl")

module("_boot.py", base_path="esp32/modules")
module("boot.py", base_path="..")
module("main.py", base_path="..")
# main.py again under another name, for _boot.py's locked path (see there).
module("ironclad_main.py", base_path="esp32/modules")
# The fleet's trusted app-image keys and hardware id (`ictl image trust`),
# staged here by `ictl firmware build --trust`.
module("ironclad_trust.py", base_path="../build/firmware")

package(
    "ironclad",
    files=(
        "__init__.py",
        "bootflow.py",
        "bootstate.py",
        "cbor.py",
        "ccm.py",
        "clock.py",
        "commands.py",
        "cose.py",
        "csr.py",
        "der.py",
        "detools.py",
        "events.py",
        "heatshrink.py",
        "identity.py",
        "image.py",
        "kdf.py",
        "keywrap.py",
        "keystore.py",
        "mono.py",
        "mqtt.py",
        "nonce.py",
        "nvs.py",
        "p256.py",
        "provision.py",
        "rsapss.py",
        "slots.py",
        "spool.py",
        "telemetry.py",
        "throttle.py",
        "update.py",
    ),
    base_path="../lib/ironclad",
)
