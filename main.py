# Runs after boot.py unless the board was soft-reset into the raw REPL (frozen
# into the firmware): start the verified app's main from /app. boot.py has
# spent the trial attempt (before the image was even read) and checked that
# the image has a main (ironclad.bootflow).
from ironclad import bootstate

if bootstate.booted():
    __import__("main")
