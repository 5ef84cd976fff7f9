"""ictl fleet simulate: N virtual devices on one broker, a delta update
rolled out to all, with power cuts and a broker restart (ictl.sim.fleet)."""
import os

from ictl import ROOT
from ictl.sim import fleet


def register(sub):
    p = sub.add_parser("fleet", help="fleet-scale simulation: roll a delta update out to N virtual devices")
    fs = p.add_subparsers(dest="fleet_cmd", metavar="SUBCOMMAND")
    fs.required = True
    s = fs.add_parser("simulate", help="provision N devices, roll out v1 -> v2 with faults, report")
    add_options(s)
    s.set_defaults(func=do_simulate)


def add_options(p, prefix=""):
    p.add_argument("--%sdevices" % prefix, type=int, default=50, help="number of devices (default 50)")
    p.add_argument("--%scut-share" % prefix, type=float, default=0.1,
                   help="share of devices that lose power mid-update (default 0.1)")
    p.add_argument("--%sno-broker-restart" % prefix, action="store_true", help="do not restart the broker mid-rollout")
    p.add_argument("--%sdir" % prefix, default=os.path.join(ROOT, "build", "fleet"), help="state directory (default build/fleet)")
    p.add_argument("--%spng" % prefix, default=os.path.join(ROOT, "build", "fleet-timeline.png"),
                   help="per-device rollout timeline (default build/fleet-timeline.png)")
    p.add_argument("--%stimeout" % prefix, type=float, default=900, help="rollout time limit in seconds (default 900)")


def summary(res):
    lines = ["fleet: %d devices, rollout to 100%% in %.0f s" % (res["n"], res["seconds"]),
             "fleet: %d bytes over MQTT for the delta rollout, %d for full images (ratio %.3f)"
             % (res["bytes"], res["full_bytes"], res["bytes"] / res["full_bytes"]),
             "fleet: power cut mid-update on %d devices; broker restarted at %s; broker peak RSS %d KiB"
             % (len(res["faults"]["cuts"]), "%.0f s" % res["faults"]["broker_restart"]
                if res["faults"]["broker_restart"] is not None else "never", res["broker_rss_kib"])]
    ends = {}
    for nm, r in sorted(res["results"].items()):
        ends.setdefault((r["state"], r["reason"], r["boots"]), []).append(nm)
    for (state, reason, boots), nms in sorted(ends.items(), key=lambda kv: -len(kv[1])):
        lines.append("fleet: %4d devices %s%s, boot %s" % (len(nms), state, " (%s)" % reason if reason else "", boots))
    lines.append("fleet: %d devices unable to boot a verified image%s"
                 % (len(res["bricked"]), ": " + ", ".join(res["bricked"]) if res["bricked"] else ""))
    return lines


def do_simulate(args):
    res = fleet.simulate(args.devices, args.dir, args.cut_share, not args.no_broker_restart, timeout=args.timeout, png=args.png)
    for line in summary(res):
        print(line)
    print("fleet: timeline %s" % args.png)
    return 1 if res["bricked"] else 0
