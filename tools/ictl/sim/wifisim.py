"""The simulated Wi-Fi a virtual board's radio sees: <device dir>/wifi.json,
read by the virtual board's stand-in `network` module (firmware/unix/board/network.py) while the
device runs, so changing it changes the world under a running board:

    ssid, key = wifisim.simulated_ap(devdir)      # one AP, a fresh passphrase
    wifisim.set_ap(devdir, ssid, up=False)        # the AP goes away (link lost)
    wifisim.set_ap(devdir, ssid, key="other")     # the AP's passphrase changed
    wifisim.set_ap(devdir, ssid, assoc_ms=3000)   # slow association
    wifisim.set_world(devdir, hang=True)          # the driver hangs (watchdog)

The passphrase here is the simulated access point's own configuration (as an
AP's is on the AP), not the board's: the board keeps its copy sealed in its
keystore.
"""
import json
import os
import secrets

FILE = "wifi.json"
# The environment of a lab that drives library modules without the boot path
# (no agent to bring the link up): the stand-in starts with the radio on and
# the station connected. A virtual board never gets it.
LAB_NET = {"ESPSIM_NET": "up"}
DEFAULT_SSID = "ironclad-sim"


def _path(devdir):
    return os.path.join(devdir, FILE)


def read(devdir):
    try:
        with open(_path(devdir)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"aps": []}


def write(devdir, world):
    tmp = _path(devdir) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(world, f)
    os.replace(tmp, _path(devdir))  # the device never reads half a file


def simulated_ap(devdir, ssid=DEFAULT_SSID, key=None, **fields):
    """Put one access point in the board's range; returns (ssid, passphrase)."""
    key = secrets.token_urlsafe(18) if key is None else key
    world = read(devdir)
    world["aps"] = [ap for ap in world.get("aps", []) if ap.get("ssid") != ssid]
    world["aps"].append(dict({"ssid": ssid, "key": key, "up": True}, **fields))
    write(devdir, world)
    return ssid, key


def set_ap(devdir, ssid, **changes):
    world = read(devdir)
    for ap in world.get("aps", []):
        if ap.get("ssid") == ssid:
            ap.update(changes)
    write(devdir, world)


def set_world(devdir, **fields):
    """World-wide faults: hang=True makes the next driver call never return."""
    world = read(devdir)
    world.update(fields)
    write(devdir, world)
