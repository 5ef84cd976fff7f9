# Ironclad on a generic ESP32 module with 4 MiB flash and no PSRAM.
# Secure Boot V2 needs silicon revision 3 (ECO3) or later: sdkconfig.board.
set(IDF_TARGET esp32)
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
)
include(${MICROPY_BOARD_DIR}/../../ironclad.cmake)
list(APPEND MICROPY_DEF_BOARD MICROPY_HW_BOARD_NAME="Ironclad ESP32")
