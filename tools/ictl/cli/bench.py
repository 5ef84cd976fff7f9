"""ictl bench: performance figures -> build/bench.json. Every time is a ratio
against a baseline measured in the same run (these machines are noisy).

Each area contributes a module `ictl/measure/bench_<area>.py` with
`run(fig, tmp, args)`; `--only AREA` runs some of them."""
import importlib
import os
import tempfile

from ictl import ROOT
from ictl.measure.figures import Figures, areas, chosen
from ictl.measure.goals import table


def register(sub):
    p = sub.add_parser("bench", help="measure performance figures into build/bench.json")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "bench.json"), help="output JSON (default build/bench.json)")
    p.add_argument("--only", action="append", metavar="AREA", help="run only this area (repeatable): %s" % ", ".join(areas("bench")))
    p.set_defaults(func=do_bench)


def do_bench(args):
    names = chosen("bench", args.only)
    fig = Figures(args.out)
    print("bench: writing %s" % args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print("bench: %s" % name, flush=True)
            area = os.path.join(tmp, name)  # each area its own: two may use the same names
            os.mkdir(area)
            importlib.import_module("ictl.measure.bench_" + name).run(fig, area, args)
            fig.save()
    fig.save()
    print("\n".join(table(args.out)))
