# Runs one device-side test function in this MicroPython process:
#   micropython _runner.py <module> <function>
# Exit status 0 = pass, 1 = fail (traceback on stderr).
import sys

mod_name, fn_name = sys.argv[1], sys.argv[2]
try:
    mod = __import__(mod_name)
    getattr(mod, fn_name)()
except Exception as e:  # any failure of the test, reported with its traceback
    sys.print_exception(e, sys.stderr)
    sys.exit(1)
print("PASS")
