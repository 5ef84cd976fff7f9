"""ictl: host tools for the Ironclad ESP32 agent (one entry point, subcommands)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ToolError(Exception):
    """An error the user can act on: printed as one line, exit status 2."""


def read_file(path, what=None):
    """A file's bytes, or a one-line ToolError ("cannot read [what] path: why")."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ToolError("cannot read %s%s: %s" % (what + " " if what else "", path, e.strerror)) from None
