#!/usr/bin/env bash
# `make unix32 MICROPY_DIR=...`: the MicroPython unix port built 32-bit with the
# ESP32's number formats (firmware/unix32/ironclad32/, docs/unix32.md) into
# build/unix32/micropython. Optional: `make test` never needs it. Uses the given
# MicroPython tree (v1.28.0, what firmware/profile/*.json targets) and copies
# nothing of it into this repository.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MP=${1:-${MICROPY_DIR:-}}
OUT=$ROOT/build/unix32
VARIANT=$ROOT/firmware/unix32/ironclad32
WANT=v1.28.0

howto() {
    cat >&2 <<EOT
unix32: $1
The 32-bit unix build needs the MicroPython $WANT source with two submodules,
and a compiler that can build 32-bit x86 code:
  apt-get install gcc-multilib
  git clone -b $WANT https://github.com/micropython/micropython.git ~/micropython
  git -C ~/micropython submodule update --init lib/mbedtls lib/micropython-lib
then: make unix32 MICROPY_DIR=~/micropython   (or make test32 MICROPY_DIR=~/micropython)
EOT
    exit 2
}

[ -n "$MP" ] || howto "MICROPY_DIR is not set"
[ -f "$MP/ports/unix/Makefile" ] || howto "no MicroPython source at MICROPY_DIR=$MP"
MP=$(cd "$MP" && pwd)
# mbedTLS for tls/ssl/cryptolib, micropython-lib for the frozen ssl module.
[ -f "$MP/lib/mbedtls/library/aes.c" ] || howto "$MP/lib/mbedtls is empty (a git submodule)"
[ -f "$MP/lib/micropython-lib/python-stdlib/ssl/ssl.py" ] || howto "$MP/lib/micropython-lib is empty (a git submodule)"
echo 'int main(void){return 0;}' | ${CC:-gcc} -m32 -x c -o /dev/null - 2>/dev/null \
    || howto "${CC:-gcc} -m32 cannot build 32-bit programs"
ver=$(sed -n 's/^#define MICROPY_VERSION_\(MAJOR\|MINOR\|MICRO\) \([0-9]*\)$/\2/p' "$MP/py/mpconfig.h" | paste -sd.)
[ "v$ver" = "$WANT" ] || echo "unix32: warning: MICROPY_DIR is MicroPython $ver, the port profile targets $WANT" >&2

# A changed variant or tree starts a clean build: ports/unix reuses objects
# and generated headers made under the old flags (a mismatch fails to link).
stamp=$( (echo "$MP"; cat "$VARIANT"/*) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$OUT/obj/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$OUT/obj"
fi
mkdir -p "$OUT/obj"
jobs=$(nproc 2>/dev/null || echo 2)
make -C "$MP/mpy-cross" -j"$jobs" >&2
make -C "$MP/ports/unix" -j"$jobs" VARIANT_DIR="$VARIANT" BUILD="$OUT/obj" >&2
echo "$stamp" > "$OUT/obj/.stamp"
# Replaced, not overwritten: a running device may be using the old one.
cp "$OUT/obj/micropython" "$OUT/micropython.tmp" && mv -f "$OUT/micropython.tmp" "$OUT/micropython"
# A 32-bit word, or the compiler ignored -m32.
"$OUT/micropython" -c "import sys; assert sys.maxsize == 2**31 - 1, sys.maxsize"
echo "unix32: built $OUT/micropython (MicroPython $ver, 32-bit)" >&2
