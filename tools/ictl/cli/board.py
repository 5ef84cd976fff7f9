"""ictl board: run a simulated device behind a pty that mpremote can use."""
from ictl.sim import board


def register(sub):
    p = sub.add_parser("board", help="run a virtual board (a simulated device on a pty for mpremote)")
    s = p.add_subparsers(dest="board_cmd", metavar="ACTION")
    s.required = True
    r = s.add_parser("run", help="boot the device and serve its console on a pty until Ctrl-C")
    r.add_argument("dir", help="device state directory (see `ictl device create`)")
    r.add_argument("--heap", type=int, default=96, metavar="KIB", help="MicroPython heap in KiB (default 96)")
    r.add_argument("--app-heap", type=int, metavar="KIB",
                   help="model an ESP32: load all code first and leave the app this heap (with --heap %d)"
                   % board.PORT_HEAP_KIB)
    r.set_defaults(func=lambda a: board.run_forever(a.dir, heap_kib=a.heap, app_heap_kib=a.app_heap))
