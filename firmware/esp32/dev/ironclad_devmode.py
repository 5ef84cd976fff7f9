# Frozen only into development firmware (firmware/esp32/manifest_dev.py): its
# presence keeps the REPL open (firmware/esp32/modules/_boot.py). A production
# firmware does not contain it, and files on the filesystem are never imported.
