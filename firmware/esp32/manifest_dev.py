# The development firmware (BOARD_VARIANT=DEV): the production set plus the
# marker that keeps the REPL open (firmware/esp32/modules/_boot.py).
include("../manifest.py")
module("ironclad_devmode.py", base_path="dev")
