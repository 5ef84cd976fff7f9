"""ictl board: run a simulated device behind a pty that mpremote can use."""
from ictl import board


def register(sub):
    p = sub.add_parser("board", help="run a virtual board (a simulated device on a pty for mpremote)")
    s = p.add_subparsers(dest="board_cmd", metavar="ACTION")
    s.required = True
    r = s.add_parser("run", help="boot the device and serve its console on a pty until Ctrl-C")
    r.add_argument("dir", help="device state directory (see `ictl device create`)")
    r.add_argument("--heap", type=int, default=96, metavar="KIB", help="MicroPython heap in KiB (default 96)")
    r.set_defaults(func=lambda a: board.run_forever(a.dir, heap_kib=a.heap))
