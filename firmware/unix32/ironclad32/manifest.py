# The upstream part of firmware/manifest.py: micropython-lib's ssl module over
# the built-in tls (as the ESP32 firmware freezes it). No asyncio, mip, or the
# unix-ffi library: the ESP32 firmware has none of them either.
require("ssl")
