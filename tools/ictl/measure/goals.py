"""The goal each issue sets for a figure, for the table `make bench` and
`make soak` print: (comparison, target). Figures without a goal are shown
with "-"."""
import json

GOALS = {
    # verified boot
    "boot_verify_ratio": ("<=", 1.25),
    "boot_verify_peak_heap_kib": ("<=", 8),
    "tamper_accepted": ("==", 0),
    "bootstate_cut_failures": ("==", 0),
    "boot_fault_points": (">=", 48),  # every step (12) x both slots x trial or not
    "boot_loops": ("==", 0),
    # identity
    "keygen_csr_ms": ("<=", 150),
    "provision_seconds": ("<=", 20),
    "keystore_cut_failures": ("==", 0),
    # telemetry
    "aead_overhead_bytes": ("<=", 24),
    "aead_ratio": ("<=", 2.0),
    "mqtt_qos1_rate_ratio": (">=", 1.0),
    "agent_steady_heap_kib": ("<=", 32),
    "agent_app_heap_kib": ("<=", 64),
    "fuzz_packets": (">=", 100000),
    "fuzz_failures": ("==", 0),
    "qos1_lost": ("==", 0),
    "agent_fuzz_messages": (">=", 20000),
    "agent_fuzz_crashes": ("==", 0),
    "agent_fuzz_violations": ("==", 0),
    "agent_fuzz_raw_failures": ("==", 0),
    "spool_cut_failures": ("==", 0),
    "nonce_reuse": ("==", 0),
    "spool_readings_lost": ("==", 0),
    # updates
    "delta_ratio_app": ("<=", 0.03),
    "delta_apply_ratio": ("<=", 3),
    "delta_apply_peak_heap_kib": ("<=", 16),
    "update_cut_failures": ("==", 0),
    # firmware
    "firmware_partition_headroom_kib": (">=", 0),
    # fleet
    "fleet_bricked": ("==", 0),
    # host side (issue 14)
    "host_fuzz_reports": (">=", 5000),
    "host_fuzz_failures": ("==", 0),
    # platform
    "nvs_cut_failures": ("==", 0),
    # the board as upstream builds it (issue 13)
    "port_profile_violations": ("==", 0),
    "nvs_handles_leaked": ("==", 0),
}

_OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "==": lambda v, t: v == t}


def verdict(name, value):
    """'met', 'MISSED' or '' (no goal, or a value that is not a number)."""
    goal = GOALS.get(name)
    if goal is None or not isinstance(value, (int, float)):
        return ""
    return "met" if _OPS[goal[0]](value, goal[1]) else "MISSED"


def table(path):
    """Lines of a figure-by-figure table: name, value, unit, goal, verdict."""
    with open(path) as f:
        data = json.load(f)
    rows = [("figure", "value", "unit", "goal", "")]
    for name in sorted(data):
        fig = data[name]
        v = fig.get("value")
        goal = GOALS.get(name)
        rows.append((name, "%.3g" % v if isinstance(v, float) else str(v), fig.get("unit", ""),
                     "%s %s" % goal if goal else "-", verdict(name, v)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
