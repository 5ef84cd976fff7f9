"""ictl: host tools for the Ironclad ESP32 agent (one entry point, subcommands)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ToolError(Exception):
    """An error the user can act on: printed as one line, exit status 2."""
