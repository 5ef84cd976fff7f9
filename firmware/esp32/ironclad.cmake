# Shared by the Ironclad boards (included from boards/*/mpconfigboard.cmake).
# Production is the default; BOARD_VARIANT=DEV selects the development build
# (boards/*/mpconfigvariant_DEV.cmake calls ironclad_development()).
get_filename_component(IRONCLAD_ROOT ${CMAKE_CURRENT_LIST_DIR}/../.. ABSOLUTE)

# sdkconfig fragments cannot hold a variable path: write the table's absolute
# path into a generated fragment in the build directory.
file(WRITE ${CMAKE_BINARY_DIR}/sdkconfig.ironclad_table
    "CONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${IRONCLAD_ROOT}/firmware/partitions-4MiB.csv\"\n")

# Port defaults first, then ours, then the board's, then the lockdown last so
# nothing after it can loosen it.
list(APPEND SDKCONFIG_DEFAULTS
    ${IRONCLAD_ROOT}/firmware/sdkconfig.ironclad
    ${CMAKE_BINARY_DIR}/sdkconfig.ironclad_table
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${IRONCLAD_ROOT}/firmware/sdkconfig.production
)
set(MICROPY_FROZEN_MANIFEST ${IRONCLAD_ROOT}/firmware/manifest.py)

macro(ironclad_development)
    list(REMOVE_ITEM SDKCONFIG_DEFAULTS ${IRONCLAD_ROOT}/firmware/sdkconfig.production)
    list(APPEND SDKCONFIG_DEFAULTS ${IRONCLAD_ROOT}/firmware/sdkconfig.development)
    set(MICROPY_FROZEN_MANIFEST ${IRONCLAD_ROOT}/firmware/esp32/manifest_dev.py)
endmacro()
