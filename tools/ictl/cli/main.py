"""The `ictl` command line: each subcommand lives in its own module with a
`register(subparsers)` function that adds its parser and sets `func`."""
import argparse
import importlib
import sys

from ictl import ToolError

# Modules that contribute subcommands, in the order --help lists them.
COMMAND_MODULES = (
    "device",
    "board",
    "pki",
    "broker",
    "image",
    "ca",
    "provision",
    "update",
    "console",
    "audit",
    "serve",
    "fleet",
    "firmware",
    "run",
    "package",
    "bench",
    "soak",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ictl",
        description="Host tools for the Ironclad ESP32 agent.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module("ictl.cli." + name)
        except ModuleNotFoundError as e:
            if e.name != "ictl.cli." + name:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ToolError as e:
        print("ictl %s: error: %s" % (args.command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ictl %s: interrupted" % args.command, file=sys.stderr)
        return 130
