"""The `ictl` command line: `main.py` parses the arguments and dispatches;
each other module here is one subcommand, with `register(subparsers)` adding
its parser and one `do_*` function per action (as mpremote's commands.py)."""
