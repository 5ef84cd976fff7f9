# Freeze the Ironclad device package into a MicroPython firmware
# (firmware/<board>/manifest.py includes this with include()).
metadata(description="Ironclad: verified boot, secure storage, secure telemetry and delta OTA for MicroPython on the ESP32.", version="0.1.0")

package("ironclad")
