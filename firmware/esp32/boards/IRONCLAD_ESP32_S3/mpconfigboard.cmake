# Ironclad on an ESP32-S3 module with 4 MiB flash and no PSRAM. The REPL (for
# provisioning) is on the native USB port; the bootloader sits at 0x0.
set(IDF_TARGET esp32s3)
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
)
include(${MICROPY_BOARD_DIR}/../../ironclad.cmake)
list(APPEND MICROPY_DEF_BOARD MICROPY_HW_BOARD_NAME="Ironclad ESP32-S3")
