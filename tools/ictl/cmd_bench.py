"""ictl bench: performance figures -> build/bench.json. Every time is a ratio
against a baseline measured in the same run (these machines are noisy).

Each area contributes a module `ictl/bench_<area>.py` with
`run(fig, tmp, args)`; `--only AREA` runs some of them."""
import glob
import importlib
import os
import tempfile

from ictl import ROOT, ToolError
from ictl.figures import Figures
from ictl.goals import table


def areas():
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(os.path.basename(p)[6:-3] for p in glob.glob(os.path.join(here, "bench_*.py")))


def register(sub):
    p = sub.add_parser("bench", help="measure performance figures into build/bench.json")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "bench.json"), help="output JSON (default build/bench.json)")
    p.add_argument("--only", action="append", metavar="AREA", help="run only this area (repeatable): %s" % ", ".join(areas()))
    p.set_defaults(func=do_bench)


def do_bench(args):
    names = args.only or areas()
    unknown = sorted(set(names) - set(areas()))
    if unknown:
        raise ToolError("unknown bench area %s (have: %s)" % (", ".join(unknown), ", ".join(areas())))
    fig = Figures(args.out)
    print("bench: writing %s" % args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print("bench: %s" % name, flush=True)
            importlib.import_module("ictl.bench_" + name).run(fig, tmp, args)
            fig.save()
    fig.save()
    print("\n".join(table(args.out)))
