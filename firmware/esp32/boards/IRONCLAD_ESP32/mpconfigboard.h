// Ironclad ESP32 board (both variants; the name comes from the cmake files).
#define MICROPY_HW_MCU_NAME "ESP32"

// Attack surface: radio services the agent does not use are not built in
// (no BLE stack, no ESP-NOW receiver, no mDNS responder on UDP 5353).
#define MICROPY_PY_BLUETOOTH (0)
#define MICROPY_PY_ESPNOW (0)
#define MICROPY_HW_ENABLE_MDNS_QUERIES (0)
#define MICROPY_HW_ENABLE_MDNS_RESPONDER (0)

// The verified app image is mounted read-only as a ROMFS (vfs.VfsRom,
// extmod/vfs_rom.c). py/mpconfig.h defaults MICROPY_VFS_ROM to 0 and no
// ports/esp32 file enables it (MicroPython v1.28.0): without this line the
// firmware has no vfs.VfsRom. firmware/profile/*.json records it.
#define MICROPY_VFS_ROM (1)
