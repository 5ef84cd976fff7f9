"""Named figures for build/bench.json and build/soak.json:
{"name": {"value": 1.23, "unit": "...", "detail": "..."}}. Each run merges
into the existing file, so partial runs (--only) keep the other figures."""
import json
import os


class Figures:
    def __init__(self, path):
        self.path = path
        self.data = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    self.data = json.load(f)
            except ValueError:
                self.data = {}

    def add(self, name, value, unit, detail):
        self.data[name] = {"value": value, "unit": unit, "detail": detail}
        print("  %-34s %12s %-8s %s" % (name, _fmt(value), unit, detail), flush=True)

    def save(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _fmt(v):
    return "%.3f" % v if isinstance(v, float) else str(v)


def best_of(fn, n=5):
    """The fastest of n runs: the least disturbed by a noisy machine."""
    return min(fn() for _ in range(n))


def areas(kind):
    """The areas `ictl bench` or `ictl soak` runs: modules ictl/measure/<kind>_<area>.py."""
    import glob

    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(os.path.basename(p)[len(kind) + 1:-3] for p in glob.glob(os.path.join(here, kind + "_*.py")))


def chosen(kind, only):
    """The areas asked for with --only (all by default), or a one-line error."""
    from ictl import ToolError

    have = areas(kind)
    unknown = sorted(set(only or ()) - set(have))
    if unknown:
        raise ToolError("unknown %s area %s (have: %s)" % (kind, ", ".join(unknown), ", ".join(have)))
    return only or have
