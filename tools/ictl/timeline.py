"""The rollout timeline picture: one row per device, its update state over
time (the fleet simulation's faults marked). Drawn for `ictl fleet` runs
(ictl.sim.fleet) and for every rollout of the fleet service
(ictl.service.rollout)."""
import os

COLORS = {"downloading": "#f0ad4e", "applied": "#5bc0de", "trial": "#9b59b6", "confirmed": "#2ecc71",
          "rolled_back": "#e74c3c", "rejected": "#c0392b"}


def timeline_png(res, path):
    """One row per device: its state over time, power cuts and the broker restart marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(res["results"])
    row = {nm: i for i, nm in enumerate(names)}
    per = {nm: [] for nm in names}
    for t, dev, state, pct, reason in res["timeline"]:
        if dev in per:
            per[dev].append((t, state))
    end = res["seconds"]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.12 * len(names) + 1.5)))
    for nm, evs in per.items():
        evs.sort()
        for i, (t, state) in enumerate(evs):
            t2 = evs[i + 1][0] if i + 1 < len(evs) else end
            ax.barh(row[nm], max(t2 - t, end / 400), left=t, height=0.8, color=COLORS.get(state, "#bbbbbb"), linewidth=0)
    for t, dev in res["faults"]["cuts"]:
        ax.plot(t, row[dev], marker="x", color="black", markersize=4)
    if res["faults"]["broker_restart"] is not None:
        ax.axvline(res["faults"]["broker_restart"], color="black", linestyle="--", linewidth=1)
        ax.text(res["faults"]["broker_restart"], len(names), " broker restart", fontsize=8, va="bottom")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in list(COLORS.values()) + ["#bbbbbb"]]
    ax.legend(handles + [plt.Line2D([], [], marker="x", color="black", linestyle="")],
              list(COLORS) + ["other report", "power cut"], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel("device")
    ax.set_yticks([])
    ax.set_title("Delta update rollout to %d devices (%.0f s to 100%%)" % (len(names), end))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
