# Development build: REPL kept, no eFuses burned (firmware/sdkconfig.development).
ironclad_development()
list(APPEND MICROPY_DEF_BOARD MICROPY_HW_BOARD_NAME="Ironclad ESP32 (development)")
