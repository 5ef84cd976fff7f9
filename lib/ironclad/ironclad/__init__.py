# Ironclad: a security agent for MicroPython on the ESP32.
__version__ = "0.1.0"
