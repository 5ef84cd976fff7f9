"""NVS stand-in power-cut campaign."""
from ictl.sim import faults


def add_args(p):
    p.add_argument("--nvs-rounds", type=int, default=150, help="NVS commits in the power-cut sweep (default 150)")


def run(fig, args):
    points, failures = faults.nvs_sweep(args.nvs_rounds, tear_bytes=(1, 5, 17))
    fig.add("nvs_cut_points", points, "cuts",
            "NVS stand-in: power cut before, and tear at 1/5/17 bytes of, every flash operation of %d commits" % args.nvs_rounds)
    fig.add("nvs_cut_failures", len(failures), "count", "states after a cut where a key lost its value or mixed two commits (must be 0)")
    return len(failures)
