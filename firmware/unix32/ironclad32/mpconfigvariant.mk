# Ironclad's 32-bit unix variant (see mpconfigvariant.h, docs/unix32.md).
# Options of ports/unix/mpconfigport.mk and ports/unix/Makefile.

# -m32 (ports/unix/Makefile, py/mkenv.mk): a 32-bit word as on the Xtensa LX6.
# Needs a multilib compiler: Debian `apt-get install gcc-multilib`.
MICROPY_FORCE_32BIT = 1

# No ffi (the ESP32 has none; with it the build would also need libffi-dev:i386)
# and no btree (not in firmware/profile/esp32.json "modules").
MICROPY_PY_FFI = 0
MICROPY_PY_BTREE = 0

# TLS as on the ESP32 (ports/esp32/mpconfigport.h: MICROPY_SSL_MBEDTLS), built
# from the lib/mbedtls submodule; cryptolib and hashlib md5/sha1 follow it.
MICROPY_PY_SSL = 1
MICROPY_SSL_AXTLS = 0
MICROPY_SSL_MBEDTLS = 1

# Filesystems the ESP32 has (firmware/profile/esp32.json: FAT and LFS2).
MICROPY_VFS_FAT = 1
MICROPY_VFS_LFS1 = 0
MICROPY_VFS_LFS2 = 1

# Frozen: what our firmware manifest takes from upstream (firmware/manifest.py:
# require("ssl"), micropython-lib's ssl over the built-in tls); the ironclad
# library itself is not frozen so the tests run the working tree's source.
FROZEN_MANIFEST ?= $(VARIANT_DIR)/manifest.py
