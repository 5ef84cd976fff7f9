"""ictl soak: fault and attack campaigns -> build/soak.json. Bounded defaults;
`make test` runs a reduced slice of each campaign."""
import os

from ictl import ROOT, faults
from ictl.figures import Figures


def register(sub):
    p = sub.add_parser("soak", help="run the fault and attack campaigns into build/soak.json")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "soak.json"), help="output JSON (default build/soak.json)")
    p.add_argument("--nvs-rounds", type=int, default=150, help="NVS commits in the power-cut sweep (default 150)")
    p.set_defaults(func=do_soak)


def do_soak(args):
    fig = Figures(args.out)
    print("soak: writing %s" % args.out)
    points, failures = faults.nvs_sweep(args.nvs_rounds, tear_bytes=(1, 5, 17))
    fig.add("nvs_cut_points", points, "cuts",
            "NVS stand-in: power cut before, and tear at 1/5/17 bytes of, every flash operation of %d commits" % args.nvs_rounds)
    fig.add("nvs_cut_failures", len(failures), "count", "states after a cut where a key lost its value or mixed two commits (must be 0)")
    fig.save()
    return 1 if failures else 0
