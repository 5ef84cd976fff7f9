"""Fleet campaign: a delta rollout to N virtual devices with power cuts on a
share of them and a broker restart mid-rollout (ictl.sim.fleet)."""
from ictl.cli import fleet as cmd_fleet
from ictl.sim import fleet


def add_args(p):
    cmd_fleet.add_options(p, prefix="fleet-")


def run(fig, args):
    res = fleet.simulate(args.fleet_devices, args.fleet_dir, args.fleet_cut_share, not args.fleet_no_broker_restart,
                         timeout=args.fleet_timeout, png=args.fleet_png)
    for line in cmd_fleet.summary(res):
        print(line)
    v2 = sum(1 for r in res["results"].values() if r["boots"] == "2.0.0" and r["state"] == "confirmed")
    other = {nm: r for nm, r in res["results"].items() if not (r["boots"] == "2.0.0" and r["state"] == "confirmed")}
    fig.add("fleet_devices", res["n"], "devices", "virtual devices (unix port, own flash) on one mosquitto")
    fig.add("fleet_rollout_seconds", round(res["seconds"], 1), "s",
            "delta update v1 -> v2 until every device reported confirmed/rolled back/rejected; "
            "%d devices lost power mid-download, broker restarted mid-rollout: %s; timeline %s"
            % (len(res["faults"]["cuts"]), res["faults"]["broker_restart"] is not None, args.fleet_png))
    fig.add("fleet_bytes_ratio", round(res["bytes"] / res["full_bytes"], 4), "ratio",
            "MQTT payload bytes of the delta rollout (incl. resends and full-image fallbacks) / the same fleet sent full images "
            "(%d / %d bytes)" % (res["bytes"], res["full_bytes"]))
    fig.add("fleet_on_v2", v2, "devices", "devices confirmed on v2; the others: %s"
            % (", ".join("%s %s (%s)" % (nm, r["state"], r["reason"]) for nm, r in sorted(other.items())) or "none"))
    fig.add("fleet_broker_peak_kib", res["broker_rss_kib"], "KiB", "mosquitto peak resident memory during the rollout")
    fig.add("fleet_bricked", len(res["bricked"]), "devices", "devices whose active and fallback slots hold no image that verifies (must be 0)")
    return len(res["bricked"])
