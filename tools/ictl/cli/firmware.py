"""ictl firmware: build, sign, flash and check the ESP32 firmware."""
import os

from ictl import ToolError, firmware, portprofile


def register(sub):
    p = sub.add_parser("firmware", help="build, sign, flash and check the ESP32 firmware")
    s = p.add_subparsers(dest="firmware_cmd", metavar="ACTION")
    s.required = True

    def board_args(q):
        q.add_argument("--board", default="IRONCLAD_ESP32", choices=sorted(firmware.BOARDS),
                       help="target board (default IRONCLAD_ESP32)")
        q.add_argument("--variant", default="production", choices=firmware.VARIANTS,
                       help="production (locked down, default) or development (REPL open, no eFuses)")

    c = s.add_parser("check", help="the checks CI runs without hardware: partition table, lockdown options, "
                                   "frozen manifest, mpy-cross version")
    board_args(c)
    c.set_defaults(func=do_check)

    b = s.add_parser("build", help="build with ESP-IDF (says what to install when it is missing)")
    board_args(b)
    b.add_argument("--micropython", default=os.environ.get("MICROPY_DIR"), metavar="DIR",
                   help="MicroPython v%s source tree (default $MICROPY_DIR)" % firmware.MICROPYTHON_VERSION)
    b.add_argument("--trust", required=True, metavar="PY", help="the fleet's ironclad_trust.py (`ictl image trust`)")
    b.add_argument("--key", metavar="PEM", help="RSA-3072 Secure Boot V2 signing key: sign the binaries after the build")
    b.add_argument("-j", "--jobs", type=int, help="parallel build jobs")
    b.set_defaults(func=do_build)

    g = s.add_parser("sign", help="sign a binary for Secure Boot V2 (espsecure sign-data --version 2)")
    g.add_argument("input", help="unsigned binary (bootloader.bin or micropython.bin)")
    g.add_argument("--key", required=True, metavar="PEM", help="RSA-3072 private key (PEM)")
    g.add_argument("-o", "--output", help="signed output (default: <input>-signed.bin)")
    g.set_defaults(func=do_sign)

    r = s.add_parser("profile", help="regenerate the port profile (firmware/profile/<chip>.json) from "
                                     "MicroPython's source and our board definitions")
    r.add_argument("--micropython", default=os.environ.get("MICROPY_DIR"), metavar="DIR", required=False,
                   help="MicroPython source: a checkout of %s, or a git repository holding that tag "
                        "(default $MICROPY_DIR)" % portprofile.TAG)
    r.add_argument("--chip", action="append", choices=sorted(portprofile.BOARDS), help="only this chip (repeatable)")
    r.set_defaults(func=do_profile)

    f = s.add_parser("flash", help="write a new board with esptool: signed bootloader, table, firmware, app image")
    board_args(f)
    f.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    f.add_argument("--app", metavar="IMAGE", help="signed app image to write into app_a (`ictl image build`)")
    f.add_argument("--baud", type=int, default=460800)
    f.add_argument("--dry-run", action="store_true", help="print the esptool commands only")
    f.set_defaults(func=do_flash)


def do_check(args):
    firmware.check(args.board, args.variant)
    t = firmware.partition_table(board=args.board)
    what = ["partition table", "frozen manifest", "mpy-cross %s" % firmware.MICROPYTHON_VERSION]
    if args.variant == "production":
        what.insert(1, "lockdown options")
    print("firmware check: %s (%s): %s: OK" % (args.board, args.variant, ", ".join(what)))
    for name, size in sorted(firmware.slot_sizes(t).items()):
        print("  %-6s %4d KiB" % (name, size // 1024))


def do_build(args):
    out = firmware.build(args.board, args.variant, args.micropython, args.trust, args.key, args.jobs)
    print("firmware: %s" % out)


def do_sign(args):
    base = args.input[:-4] if args.input.endswith(".bin") else args.input
    out = firmware.sign(args.input, args.output or base + "-signed.bin", args.key)
    print("signed (Secure Boot V2, RSA-3072): %s" % out)


def do_flash(args):
    firmware.flash(args.board, args.variant, args.port, args.app, args.baud, args.dry_run)


def do_profile(args):
    if not args.micropython:
        raise ToolError("firmware profile needs the MicroPython source: --micropython DIR or $MICROPY_DIR")
    try:
        for p in portprofile.write(portprofile.Source(args.micropython), args.chip):
            print("port profile: %s" % p)
    except portprofile.ProfileError as e:
        raise ToolError(str(e)) from None
