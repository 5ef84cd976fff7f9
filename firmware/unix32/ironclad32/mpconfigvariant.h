// Ironclad's 32-bit unix variant: the ESP32 port's word size and number
// formats on the host, for the device tests (docs/unix32.md). Built out of
// tree by firmware/unix32/build.sh from MicroPython v1.28.0's ports/unix with
// VARIANT_DIR pointing here; nothing of upstream is in our repository.
//
// What is set here is what the device code can observe and the ESP32 has
// differently from the 64-bit unix build the tests normally use. The rest
// (sockets, termios, readline, the unix `time`, `os` and main.c) stays the
// unix port's own: the stand-ins in firmware/unix/ sit on top of it.

// The feature level both ports start from: ports/esp32/mpconfigport.h and
// ports/unix/variants/standard/mpconfigvariant.h both set EXTRA_FEATURES.
#define MICROPY_CONFIG_ROM_LEVEL       (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)

// Object representation A with 32-bit words (MICROPY_FORCE_32BIT=1 in
// mpconfigvariant.mk): small ints are 31-bit, -2**30 .. 2**30-1, as on the
// ESP32 (ports/esp32/mpconfigport.h: MICROPY_OBJ_REPR_A on a 32-bit Xtensa).
// Anything beyond becomes a heap-allocated mpz, and time.ticks_* wrap at
// MICROPY_PY_TIME_TICKS_PERIOD = MP_SMALL_INT_POSITIVE_MASK + 1 = 2**30.
#define MICROPY_OBJ_REPR               (MICROPY_OBJ_REPR_A)

// Big ints: mpz (ports/esp32/mpconfigport.h) with 16-bit digits, what py/mpz.h
// picks on any target that is not x86-64 or Win64. Said here too because
// ports/unix/Makefile forces -DMPZ_DIG_SIZE=16 only when something is frozen.
#define MICROPY_LONGINT_IMPL           (MICROPY_LONGINT_IMPL_MPZ)
#ifndef MPZ_DIG_SIZE
#define MPZ_DIG_SIZE                   (16)
#endif

// Single-precision floats (ports/esp32/mpconfigport.h: MICROPY_FLOAT_IMPL_FLOAT),
// boxed on the heap under REPR_A as on the board.
#define MICROPY_FLOAT_IMPL             (MICROPY_FLOAT_IMPL_FLOAT)

// The unix port's common extras (ports/unix/variants/mpconfigvariant_common.h):
// the unix os/time modules the stand-ins wrap, readline, emergency exception
// buffer; found through ports/unix's -I. as this directory is out of tree. It
// defines MICROPY_FLOAT_IMPL and MICROPY_LONGINT_IMPL only when unset, so the
// lines above win.
#include "variants/mpconfigvariant_common.h"

// mpconfigvariant_common.h turns on the ROM filesystem for unix; our board
// turns it on as well (firmware/esp32/boards/IRONCLAD_ESP32/mpconfigboard.h:
// the verified app image is a ROMFS), so both agree. No romfs ioctl on unix.

// The ESP32's error text level (ports/esp32/mpconfigport.h), where
// mpconfigvariant_common.h sets DETAILED unconditionally: messages without the
// detail (e.g. no names in "function takes N positional arguments").
#undef MICROPY_ERROR_REPORTING
#define MICROPY_ERROR_REPORTING        (MICROPY_ERROR_REPORTING_NORMAL)

// Modules of the ESP32 port (firmware/profile/esp32.json "modules"):
// cryptolib (on mbedTLS) and hashlib md5/sha1 follow MICROPY_PY_SSL
// (py/mpconfig.h), which mpconfigvariant.mk turns on; sha256 is always on
// (MICROPY_PY_HASHLIB_SHA256). No cryptolib CTR mode, as on the ESP32
// (py/mpconfig.h default 0, not set by ports/esp32).
#define MICROPY_PY_CRYPTOLIB_CTR       (0)
