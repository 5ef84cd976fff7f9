"""ictl soak: fault and attack campaigns -> build/soak.json. Bounded defaults;
`make test` runs a reduced slice of each campaign.

Each campaign is a module `ictl/soak_<area>.py` with `add_args(parser)`
(optional) and `run(fig, args)` returning its number of failures."""
import glob
import importlib
import os

from ictl import ROOT, ToolError
from ictl.figures import Figures
from ictl.goals import table


def areas():
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(os.path.basename(p)[5:-3] for p in glob.glob(os.path.join(here, "soak_*.py")))


def register(sub):
    p = sub.add_parser("soak", help="run the fault and attack campaigns into build/soak.json")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "soak.json"), help="output JSON (default build/soak.json)")
    p.add_argument("--only", action="append", metavar="AREA", help="run only this campaign (repeatable): %s" % ", ".join(areas()))
    for name in areas():
        mod = importlib.import_module("ictl.soak_" + name)
        if hasattr(mod, "add_args"):
            mod.add_args(p)
    p.set_defaults(func=do_soak)


def do_soak(args):
    names = args.only or areas()
    unknown = sorted(set(names) - set(areas()))
    if unknown:
        raise ToolError("unknown soak campaign %s (have: %s)" % (", ".join(unknown), ", ".join(areas())))
    fig = Figures(args.out)
    print("soak: writing %s" % args.out)
    failed = 0
    for name in names:
        print("soak: %s" % name, flush=True)
        failed += importlib.import_module("ictl.soak_" + name).run(fig, args) or 0
        fig.save()
    print("\n".join(table(args.out)))
    return 1 if failed else 0
