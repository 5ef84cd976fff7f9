"""Issue 13, finding 6: every random draw of the device code goes through
ironclad.rng, which refuses until the radio is on (tests/device/test_net.py
checks the refusal, tests/host/test_wifi.py and test_run.py that the agent
and provisioning turn the radio on first); and the hardware watchdog is the
app's, never the boot path's."""
import glob
import os
import re

from mphelp import ROOT

DEVICE_CODE = sorted(glob.glob(os.path.join(ROOT, "lib", "ironclad", "ironclad", "*.py"))
                     + glob.glob(os.path.join(ROOT, "app", "*.py"))
                     + glob.glob(os.path.join(ROOT, "firmware", "esp32", "modules", "*.py"))
                     + [os.path.join(ROOT, "boot.py"), os.path.join(ROOT, "main.py")])
DRAW = re.compile(r"\burandom\b|^\s*(import\s+random\b|from\s+random\s+import)|\brandom\.\w+\(|getrandbits", re.M)
BOOT_PATH = ("boot.py", "main.py", "_boot.py", "ironclad_main.py", "bootflow.py", "bootstate.py", "image.py", "rsapss.py")


def _code(path):
    with open(path) as f:
        return "\n".join(line.split("#", 1)[0] for line in f)  # comments may name what they avoid


def test_no_device_module_draws_randomness_except_rng():
    assert len(DEVICE_CODE) > 20
    direct = [os.path.relpath(p, ROOT) for p in DEVICE_CODE if os.path.basename(p) != "rng.py" and DRAW.search(_code(p))]
    assert direct == [], "random draws outside ironclad.rng: %s" % direct
    assert "os.urandom" in _code(os.path.join(ROOT, "lib", "ironclad", "ironclad", "rng.py"))


def test_the_check_finds_a_direct_draw():
    assert DRAW.search("k = os.urandom(32)") and DRAW.search("import random\n") and DRAW.search("x = random.getrandbits(8)")
    assert not DRAW.search("d = rng.get(32)")


def test_the_boot_path_never_starts_the_watchdog():
    for p in DEVICE_CODE:
        if os.path.basename(p) in BOOT_PATH:
            code = _code(p)
            assert "WDT" not in code and "watchdog" not in code, p
    agent = _code(os.path.join(ROOT, "app", "agent.py"))
    assert "watchdog.start(" in agent and "watchdog.feed()" in agent
