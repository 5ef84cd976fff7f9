"""ictl soak: fault and attack campaigns -> build/soak.json. Bounded defaults;
`make test` runs a reduced slice of each campaign.

Each campaign is a module `ictl/measure/soak_<area>.py` with `add_args(parser)`
(optional) and `run(fig, args)` returning its number of failures."""
import importlib
import os

from ictl import ROOT
from ictl.measure.figures import Figures, areas, chosen
from ictl.measure.goals import table


def register(sub):
    p = sub.add_parser("soak", help="run the fault and attack campaigns into build/soak.json")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "soak.json"), help="output JSON (default build/soak.json)")
    p.add_argument("--only", action="append", metavar="AREA", help="run only this campaign (repeatable): %s" % ", ".join(areas("soak")))
    for name in areas("soak"):
        mod = importlib.import_module("ictl.measure.soak_" + name)
        if hasattr(mod, "add_args"):
            mod.add_args(p)
    p.set_defaults(func=do_soak)


def do_soak(args):
    names = chosen("soak", args.only)
    fig = Figures(args.out)
    print("soak: writing %s" % args.out)
    failed = 0
    for name in names:
        print("soak: %s" % name, flush=True)
        failed += importlib.import_module("ictl.measure.soak_" + name).run(fig, args) or 0
        fig.save()
    print("\n".join(table(args.out)))
    return 1 if failed else 0
